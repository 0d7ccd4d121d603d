"""`dreamlr train`: DreamBooth with any adapter variant, from a YAML config plus flags."""

from __future__ import annotations

import argparse

HELP = "personalize a Stable Diffusion model on a few subject images (DreamBooth with an adapter)"

# flag -> config key (dotted keys reach into the adapter section)
FLAGS = {
    "model": "pretrained_model_name_or_path",
    "instance_dir": "instance_data_dir",
    "instance_prompt": "instance_prompt",
    "variant": "adapter.variant",
    "rank": "adapter.rank",
    "max_steps": "max_train_steps",
    "output_dir": "output_dir",
    "resume": "resume_from_checkpoint",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dreamlr.adapters.registry import variant_help  # the --variant help lists the registry's variants

    parser.add_argument("--config", help="YAML file of config keys (see configs/); flags and --set override it")
    parser.add_argument("--list-keys", action="store_true", help="list every config key with its type and default")
    parser.add_argument("--model", help="SD 1.x, 2.x or SDXL: hub id, local diffusers folder, .safetensors/.ckpt "
                                        "file, or a built-in (`tiny`, `tiny-sdxl`, `world`)")
    parser.add_argument("--instance-dir", help="folder of subject images (+ optional same-name .txt captions)")
    parser.add_argument("--instance-prompt", help="prompt with the rare token, e.g. 'a photo of sks dog'")
    parser.add_argument("--variant", help=variant_help())
    parser.add_argument("--rank", type=int, help="adapter rank")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (max_train_steps)")
    parser.add_argument("--output-dir", help="run folder")
    parser.add_argument("--resume", metavar="latest|DIR", help="continue from the latest (or a given) checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete what --output-dir holds (only inside it) and train afresh")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config key, e.g. --set learning_rate=5e-5 --set adapter.alpha=16 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from dreamlr.commands._checks import check_resume
    from dreamlr.config_files import list_keys, parse_set
    from dreamlr.diffusion.config import DreamBoothConfig

    if args.list_keys:
        from dreamlr.adapters import AdapterConfig

        print(list_keys(DreamBoothConfig, {"adapter": AdapterConfig}))
        return 0
    from dreamlr.diffusion.train import train

    overrides = {key: getattr(args, flag) for flag, key in FLAGS.items() if getattr(args, flag) is not None}
    overrides.update(parse_set(args.set))
    config = DreamBoothConfig.from_sources(args.config, overrides)
    check_resume(config.output_dir, config.resume_from_checkpoint)
    run_dir = train(config, overwrite=args.overwrite)
    print(f"adapter written to {run_dir / 'adapter.safetensors'}")
    return 0
