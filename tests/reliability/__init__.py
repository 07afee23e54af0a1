"""Reliability suite: faults and bad inputs, through real tool processes where a user meets them.

Faults come at fixed points (``kill_point.py``): SIGKILL after a chosen iteration, in the middle
of a chosen checkpoint write or after the final checkpoint; SIGTERM after a chosen iteration; a
NaN written into a weight before a chosen iteration. ``detection_runs.py`` runs the tiny
``train_net`` jobs. A run resumed with its own process count must end bit-identical to an
uninterrupted run of the same seed, process count and precision (CPU); resumed with another
process count, it must read the same samples per step.

- ``test_detection_faults.py``: detection training killed, stopped by SIGTERM, resumed from a
  damaged latest checkpoint, stopped by a NaN loss, resumed on another process count;
- ``test_pretrain_faults.py``: ``tools/pretrain.py`` killed with 2 bf16 processes and resumed
  with 2 and with 1; a NaN loss;
- ``test_run_rules.py``: re-opening a run folder, Ctrl-C, a bad or busy ``OUTPUT_DIR``;
- ``test_bad_images.py``, ``test_annotations.py``, ``test_configs.py``,
  ``test_untrusted_files.py``: bad inputs, each a clear error or a counted skip.

What is promised, and the fault tests elsewhere under tests/: docs/reliability.md.
"""
