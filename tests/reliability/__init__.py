"""Reliability suite: where each fault and bad input that bitdet promises to survive is tested.

Every fault is injected at a fixed point (``kill_point.py``: after a chosen iteration, in the
middle of a chosen checkpoint write, after the final checkpoint, a NaN before a chosen
iteration); every resume is compared bit for bit with an uninterrupted run of the same seed,
process count and precision (CPU).

Faults
- SIGKILL in detection training at 4 fixed points, 1 and 2 processes (gloo), float32 and the
  shipped bf16 autocast; the killed run's checkpoints equal the reference's and the resumed
  run ends bit-identical:
  reliability/test_detection_faults.py::test_sigkill_then_resume_is_bit_identical and
  ::test_two_process_bf16_run_resumes_exactly_and_continues_its_stream_on_one_process (that
  kill also resumed on 1 process: the same images per iteration)
- SIGTERM in detection training: checkpoint at that iteration, exit 0, resume finishes exactly:
  reliability/test_detection_faults.py::test_sigterm_saves_current_iteration_exits_zero_and_resumes_exactly
- A truncated latest checkpoint: resume falls back to the previous one (bit-identical end);
  nothing readable: one-line error:
  reliability/test_detection_faults.py::test_damaged_latest_checkpoint_falls_back_to_the_previous_one,
  engine/test_trainer.py::test_damaged_latest_checkpoint_falls_back_to_the_previous_one,
  engine/test_checkpoint.py::test_newest_readable_skips_damaged_files_newest_first
- A NaN loss: one-line error naming the iteration, the last good checkpoint kept:
  reliability/test_detection_faults.py::test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint,
  reliability/test_pretrain_faults.py::test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint,
  engine/test_trainer.py::test_non_finite_loss_names_step_and_keeps_checkpoint; NaN weights
  are never written: engine/test_checkpoint.py::test_weights_with_nan_are_never_written
- SIGKILL + exact resume of pretraining: tools/pretrain.py with 2 processes in bf16, then resumed
  with 2 (bit-identical) and with 1 (the same samples per step):
  reliability/test_pretrain_faults.py::test_two_process_bf16_pretraining_resumes_exactly_and_on_one_process;
  the engine with 1 process, float32 and bf16:
  engine/test_trainer.py::test_resume_after_sigkill_is_bit_identical; SIGTERM there:
  engine/test_trainer.py::test_sigterm_and_ctrl_c_save_the_step_and_exit
- Another process count on resume: detection's stream continues
  (detection/test_sampler.py::test_resuming_with_another_process_count_keeps_the_global_batches);
  pretraining goes on for a map-style set and is refused with a batch hook or streamed shards:
  engine/test_trainer.py::test_resume_with_another_process_count_*,
  pretrain/test_streaming.py::test_streamed_training_refuses_another_process_count_on_resume
- Fine-tuning: SIGKILL of tools/finetune.py at a fixed step, then resume (bit-identical):
  transfer/test_finetune.py::test_sigkill_then_resume_continues_exactly
- Checkpoint write failing midway (ENOSPC simulated) keeps the previous checkpoint:
  detection/test_retinanet.py::test_checkpoint_save_is_atomic (the writer,
  bitdet.weights.checkpoint_file, is shared by the engine)
- A failing DDP rank ends all ranks with its error (gloo):
  engine/test_distributed.py::test_failing_rank_ends_the_job_with_its_error
- Ctrl-C mid-run (train_net): checkpoint at that iteration, exit 130 without a traceback, the
  same command continues; re-running on a run folder of other settings, two runs started
  together on one OUTPUT_DIR, a file as OUTPUT_DIR: reliability/test_run_rules.py

Bad inputs
- Images (truncated, zero bytes, grayscale, CMYK, 16-bit, alpha, EXIF rotation, huge):
  reliability/test_bad_images.py (bitdet's decoder, Detectron2's read_image, and the
  skipping detection mapper)
- Annotations (malformed JSON, missing keys, unknown categories, degenerate and
  out-of-image boxes, empty images): reliability/test_annotations.py
- Configs (unknown keys, wrong types, missing files and _BASE_, bad YAML):
  reliability/test_configs.py

Untrusted files (.npz with pickles, .pth / .pkl carrying code, YAML Python tags; both
bitdet's and Detectron2's loaders): reliability/test_untrusted_files.py
"""
