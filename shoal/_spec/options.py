"""The function options a variant may change."""

from __future__ import annotations

# What `Function.with_options` / `Cls.with_options` may change, as sent to the control plane for a variant.
OVERRIDABLE_OPTIONS = ("timeout", "retries", "max_containers", "buffer_containers", "scaledown_window", "cpu",
                       "memory", "gpu", "region", "max_inputs", "target_inputs", "batch_max_size", "batch_wait_ms")
OVERRIDABLE_EXTRA = ("cloud", "routing_region")
