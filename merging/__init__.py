"""Merge LoRA adapters into one PEFT LoRA adapter: methods registered by name (one small file per family),
executed out of core, a bounded batch of modules at a time; plus a factored interference report and a
merged-checkpoint export.

Importing this package registers every method in merging.registry.METHODS.
"""
from merging import concat, dare, linear, peft_linear, ties  # noqa: F401  (registration side effects)
from merging.execute import MergeInput, MergeSummary, merge_adapters
from merging.export import export_merged_checkpoint
from merging.interference import interference_report
from merging.params import Factor, MergeParams
from merging.registry import METHODS, MergeMethod, UnknownMergeMethod, get_method, register

__all__ = [
    "Factor", "MergeParams", "MergeMethod", "METHODS", "UnknownMergeMethod", "get_method", "register",
    "MergeInput", "MergeSummary", "merge_adapters", "interference_report", "export_merged_checkpoint",
]
