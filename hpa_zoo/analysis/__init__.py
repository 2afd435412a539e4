"""The analysis layer: the paper's data science on any run — figures and reports (`report`) and the same-sample leak
audit (`leaks`). Imports every layer below it, inference included."""
