"""Reliability suite: where each fault and bad input that bitdet promises to survive is tested.

Faults
- SIGKILL at a random point of detection training, then resume: nothing lost, checkpoints
  bit-identical to an uninterrupted run, final model within a documented tolerance:
  reliability/test_detection_faults.py::test_sigkill_at_random_point_loses_nothing_and_resume_converges
- SIGTERM in detection training: checkpoint at that iteration, exit 0, resume finishes:
  reliability/test_detection_faults.py::test_sigterm_saves_current_iteration_exits_zero_and_resumes
- SIGKILL + exact resume of the classification engine (pretraining runs on it):
  engine/test_trainer.py::test_resume_after_sigkill_is_bit_identical; SIGTERM there:
  engine/test_trainer.py::test_sigterm_and_ctrl_c_save_the_step_and_exit
- Fine-tuning resume exactness (kill simulated by deleting the later checkpoint):
  transfer/test_finetune.py::test_resume_continues_exactly
- Checkpoint write failing midway (ENOSPC simulated) keeps the previous checkpoint:
  detection/test_retinanet.py::test_checkpoint_save_is_atomic (the writer, bitdet's
  atomic_write, is shared by the engine)
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
