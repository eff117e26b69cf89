"""Job specs (torch-free), handlers (one per kind) and the worker loop."""
