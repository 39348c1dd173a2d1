"""Compatibility with the official Tune-A-Video code (showlab/Tune-A-Video), all of it in one place.

* `layout`: its tuned output folder, read and written (UNet3D checkpoints, inversion latents, config.yaml);
* `config`: its YAML training configs, read as tav's flat tune and edit options;
* `jobs`: `tav import-official` and `tav export --format official`.

Import the submodule you need: `layout` and `jobs` load torch, `config` does not.
"""
