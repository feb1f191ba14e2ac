"""The `yume` command line. Subcommands import their modules lazily so that `yume --help` is instant."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("yume")

# Prefect settings the CLI defaults (the environment still wins). The ephemeral API server that a flow starts
# when no PREFECT_API_URL is set must create and migrate its SQLite database on first use; on a fresh 2-core
# machine that took longer than Prefect's 20 s default and `make demo` died with "Timed out while attempting to
# connect to ephemeral Prefect API server". Analytics off: training nodes are often offline, where the server's
# telemetry logged an ERROR ("Name or service not known") into every run.
PREFECT_DEFAULTS = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


# Another run holds the work directory: sysexits' EX_TEMPFAIL, "try again later" (a scheduler can tell it apart).
EXIT_WORKDIR_BUSY = 75


def apply_prefect_defaults() -> None:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def common_options() -> argparse.ArgumentParser:
    """-v on every subcommand (before or after its name)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, and tracebacks for errors")
    return common


def profile_options() -> argparse.ArgumentParser:
    """--profile, --workdir, --set: every command that reads a profile takes all three."""
    p = argparse.ArgumentParser(add_help=False, parents=[common_options()])
    p.add_argument("--profile", default="tiny", help="embedded profile name (tiny, yume15) or a .yaml path")
    p.add_argument("--workdir", default=None, help="work directory (overrides the profile's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set actions.mode=yume (repeatable)")
    return p


def _add_wait_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true",
                   help="if another run holds the work directory, wait for it instead of refusing")


def run_holding_workdir(args: argparse.Namespace, run, stage: str | None = None) -> int:
    """Take the work directory's lock before Prefect starts (a busy workdir is refused in a second, not after the
    API server's start-up), then run ``run(overrides)`` and print its JSON summary. The flows take the same lock
    again (reentrant), which is what guards a run started by a deployment."""
    from yume.config import load_profile
    from yume.workdir_lock import hold_workdir

    overrides = list(args.overrides) + (["lock.wait=true"] if args.wait else [])
    cfg = load_profile(args.profile, args.workdir, overrides)
    if stage is not None:
        from yume.flows.upstream import require_upstream

        require_upstream(stage, cfg)  # before Prefect starts: a missing input fails in a second
    with hold_workdir(cfg.workdir_path, cfg.lock):
        result = run(overrides)
    print(json.dumps(result, indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from yume.config import load_profile
    from yume.flows.retrain import retrain
    from yume.tasks.preflight import require_preflight

    profile = load_profile(args.profile, args.workdir, args.overrides)
    require_preflight(profile)  # before Prefect starts

    code = run_holding_workdir(args, lambda o: retrain(profile=args.profile, workdir=args.workdir, overrides=o))
    metrics = profile.workdir_path / "reports" / "evaluate" / "metrics.json"
    play = json.loads(metrics.read_text()).get("play") if metrics.is_file() else None
    if code == 0 and play:
        print(f"Play {play['what']} in the browser:\n  {play['command']}\nthen open {play['url']}", file=sys.stderr)
    return code


def cmd_flow(args: argparse.Namespace) -> int:
    def run_stage(overrides: list[str]) -> dict:
        # Imported only once the configuration, the upstream manifests and the lock are checked: the flows pull in
        # torch, Lightning and Prefect (about 14 s on 2 cores), and a bad --set should not wait for them.
        from yume.flows import STAGE_FLOWS

        return STAGE_FLOWS[args.stage](profile=args.profile, workdir=args.workdir, overrides=overrides)

    return run_holding_workdir(args, run_stage, stage=args.stage)


def cmd_pretrain_base(args: argparse.Namespace) -> int:
    from yume.flows.pretrain_base import pretrain_base

    return run_holding_workdir(args, lambda o: pretrain_base(profile=args.profile, workdir=args.workdir, overrides=o,
                                                             export_only=args.export_only))


def cmd_render_worlds(args: argparse.Namespace) -> int:
    from yume.config import load_profile
    from yume.datasets.procedural import write_sekai_dataset

    profile = load_profile(args.profile, args.workdir, args.overrides)
    if profile.world is None:
        print(f"profile {profile.name!r} has no `world` section", file=sys.stderr)
        return 2
    out = write_sekai_dataset(Path(args.out), profile.world)
    print(out)
    return 0


def cmd_actions(args: argparse.Namespace) -> int:
    import numpy as np

    from yume.datasets.sekai import load_camera
    from yume.tasks.actions import ActionConfig, trajectory_to_actions

    c2w, _ = load_camera(Path(args.path))
    cfg = ActionConfig(mode=args.mode, stride=args.stride, min_segment_frames=args.min_frames)
    labels = trajectory_to_actions(c2w, cfg, fps=args.fps)
    if args.json:
        out = {
            "frames": [{"frame": i, "keys": k, "mouse": m} for i, (k, m) in enumerate(zip(labels.keys, labels.mouse))],
            "segments": [
                {"start": s.start, "end": s.end, "keys": s.keys, "mouse": s.mouse, "text": s.text,
                 "speed": s.speed, "distance": s.distance, "turn_rate_deg": s.turn_rate_deg,
                 "view_rotation_deg": s.view_rotation_deg}
                for s in labels.segments
            ],
        }
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        return 0
    joint = np.char.add(np.char.add(labels.keys.astype(str), " "), labels.mouse.astype(str))
    values, counts = np.unique(joint, return_counts=True)
    print(f"{len(labels.keys)} transitions, mode={args.mode}, stride={args.stride}")
    for v, c in sorted(zip(values, counts), key=lambda x: -x[1]):
        print(f"  {v:10s} {c:7d} frames")
    print(f"{len(labels.segments)} segments of >= {args.min_frames} frames:")
    for s in labels.segments:
        print(f"  [{s.start:6d}, {s.end:6d})  {s.keys:5s} {s.mouse:3s} {s.speed:.4f} u/s  {s.text}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "actions":
        from yume.tasks.bench_actions import main as bench
    elif args.what == "tscm":
        from yume.models.bench_tscm import main as bench
    elif args.what == "curation":
        from yume.tasks.bench_curation import main as bench
    elif args.what == "train":
        from yume.tasks.bench_train import main as bench
    elif args.what == "play":
        from yume.play.bench import main as bench
    else:  # pragma: no cover - argparse restricts choices
        raise ValueError(args.what)
    return bench(args.rest + (["--json"] if args.json else []))


def cmd_manifest(args: argparse.Namespace) -> int:
    from yume.datasets.manifest import ManifestError, summarize_manifest, validate_manifest

    path = Path(args.path)
    if args.action == "validate":
        problems = validate_manifest(path)
        if problems:
            for p in problems:
                print(f"INVALID: {p}", file=sys.stderr)
            return 1
        print(f"OK: {path} is a valid manifest")
        return 0
    try:
        summary = summarize_manifest(path)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=1))
    else:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{summary['path']}[/]: kind={summary['kind']} schema v{summary['schema_version']}, "
                  f"{summary['shards']} shards, {summary['rows']} rows")
    for key, counts in summary.items():
        if isinstance(counts, dict) and counts:
            table = Table(title=key)
            table.add_column("value")
            table.add_column("rows", justify="right")
            for value, n in counts.items():
                table.add_row(str(value), str(n))
            console.print(table)


def cmd_generate(args: argparse.Namespace) -> int:
    from yume.config import load_profile
    from yume.models.sampler import generate_to_mp4, parse_actions

    profile = load_profile(args.profile, args.workdir, args.overrides)
    checkpoint = Path(args.checkpoint)
    if args.workdir and not checkpoint.is_absolute():
        checkpoint = profile.workdir_path / checkpoint
    device = resolve_device(args.device)
    # The checkpoint's recorded schedule is the default; only the sampler fields given with --set override it.
    explicit = {key: getattr(profile.sampler, key) for key in sampler_overrides(args.overrides)}
    try:
        actions = parse_actions(args.actions)
        metric = None
        if args.label:
            from yume.tasks.foundation_eval import metric_config

            metric = metric_config(profile)
        result = generate_to_mp4(checkpoint, actions, args.out, image=args.image, prompt=args.prompt,
                                 cfg=profile.sampler, seed=args.seed, explicit=explicit, label_metric=metric,
                                 device=device)
    except (ValueError, FileNotFoundError) as e:  # bad action syntax, image or checkpoint: a message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.label:
        for row in result["labels"]:
            print(f"chunk {row['chunk']:3d}  commanded {row['commanded']:8s} measured {row['measured']:8s} "
                  f"{'ok' if row['correct'] else '--'}", file=sys.stderr)
        print(f"{result['correct_chunks']} of {len(result['labels'])} chunks labelled as commanded", file=sys.stderr)
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


def sampler_overrides(overrides: list[str]) -> list[str]:
    """The ``sampler`` fields a list of ``--set KEY=VALUE`` assigns (``sampler.steps=4`` -> ``steps``)."""
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    return [k.split(".", 1)[1].split(".")[0] for k in keys if k.startswith("sampler.") and "." in k]


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def cmd_play(args: argparse.Namespace) -> int:
    from yume.config import load_profile
    from yume.play.launch import build_server, play_url
    from yume.play.server import PlayConfig, serve

    profile = load_profile(args.profile, args.workdir, args.overrides)
    sets = [o for o in args.overrides if o.split("=", 1)[0].strip().startswith("sampler.")]
    explicit = {key: getattr(profile.sampler, key) for key in sampler_overrides(args.overrides)}
    try:
        cfg = PlayConfig(host=args.host, port=args.port, token=args.token or os.environ.get("YUME_PLAY_TOKEN"),
                         max_sessions=args.max_sessions, seed=profile.sampler.seed if args.seed is None else args.seed)
        server = build_server(args.checkpoint, profile, image=args.image, prompt=args.prompt, cfg=cfg,
                              device=resolve_device(args.device), sampler_sets=tuple(sets), explicit=explicit,
                              history_frames=args.history_frames or None)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"yume play: {server.checkpoint_name} ({server.sampler.schedule_line}); start: {server.start.description}",
          file=sys.stderr)
    print(f"open {play_url(server.cfg)}  (Ctrl+C stops)", file=sys.stderr)
    serve(server)
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from yume.config import load_profile
    from yume.models.info import report

    name = args.profile_name or args.profile  # `yume model info tiny` still works
    return report(load_profile(name, args.workdir, args.overrides), args.json)


def cmd_check(args: argparse.Namespace) -> int:
    from yume.config import load_profile
    from yume.tasks.preflight import format_table, run_checks

    checks = run_checks(load_profile(args.profile, args.workdir, args.overrides))
    print(format_table(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from yume.config import config_hash, load_profile

    profile = load_profile(args.profile, args.workdir, args.overrides)
    dumped = {"config_hash": config_hash(profile), "profile": profile.model_dump(mode="json")}
    if args.json:
        sys.stdout.write(json.dumps(dumped, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yume", description="Yume-1.5 curation and training pipeline",
                                     parents=[common_options()])
    parser.set_defaults(verbose=False)
    sub = parser.add_subparsers(dest="command", required=True)
    common, profiled = common_options(), profile_options()

    p = sub.add_parser("demo", help="run the whole DAG (tiny profile by default)", parents=[profiled])
    _add_wait_arg(p)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("flow", help="run one stage flow", parents=[profiled])
    from yume.flows import STAGE_NAMES

    p.add_argument("stage", choices=STAGE_NAMES)
    _add_wait_arg(p)
    p.set_defaults(fn=cmd_flow)

    p = sub.add_parser("pretrain-base", help="pretrain the tiny base train_foundation fine-tunes (run once; ships)",
                       description="Train the tiny profile's base DiT (a general video model of the procedural "
                       "worlds, no action sentences), export it in diffusers format to pretrain_base.out with a model "
                       "card and learning curve. Resumes from its last checkpoint.", parents=[profiled])
    _add_wait_arg(p)
    p.add_argument("--export-only", action="store_true",
                   help="do not train: export the newest checkpoint with its card (a run in progress)")
    p.set_defaults(fn=cmd_pretrain_base)

    p = sub.add_parser("render-worlds", help="write procedural Sekai-format worlds", parents=[profiled])
    p.add_argument("out", help="output directory (Sekai layout: videos/, cameras/, annotations.csv)")
    p.set_defaults(fn=cmd_render_worlds)

    p = sub.add_parser("actions", help="camera trajectory (.npz/.npy) -> keyboard/mouse labels", parents=[common],
                       description="Label a camera trajectory (Sekai .npz with `extrinsic`, or a (N, 4, 4) "
                       "camera-to-world .npy) with WASD keys and mouse directions per frame transition, and cut "
                       "it into action segments.")
    p.add_argument("path", help="the camera file (.npz or .npy)")
    p.add_argument("--mode", choices=["robust", "yume"], default="robust",
                   help="robust: the project's labeller (default); yume: the paper's released rule")
    p.add_argument("--stride", type=int, default=1, help="compare poses this many frames apart (default 1)")
    p.add_argument("--min-frames", type=int, default=33, help="minimum segment length in transitions (default 33)")
    p.add_argument("--fps", type=float, default=30.0, help="the trajectory's frame rate, for speeds (default 30)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout (frames and segments)")
    p.set_defaults(fn=cmd_actions)

    p = sub.add_parser("bench", help="benchmarks that print figures", parents=[common])
    p.add_argument("what", choices=["actions", "tscm", "curation", "train", "play"])
    p.add_argument("--json", action="store_true", help="one JSON line on stdout")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options (e.g. --profile, --device)")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("manifest", help="inspect Parquet manifests", parents=[common])
    p.add_argument("action", choices=["show", "validate"])
    p.add_argument("path", help="a manifest directory, e.g. runs/tiny/manifests/real")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(fn=cmd_manifest)

    p = sub.add_parser("generate", help="chunked autoregressive generation with a trained world model -> mp4",
                       description="Actions: one KEYS:MOUSE per chunk, comma/semicolon/newline separated, *N "
                       "repeats (W:>*4, S+D:^<, None:.), or a file with that text or a JSON list of "
                       '{"keys", "mouse", "event"} objects; see README "Generating videos". The profile\'s '
                       "`sampler` section applies where --set names a field (the checkpoint's recorded schedule "
                       "otherwise); a relative --checkpoint resolves against --workdir when one is given.",
                       parents=[profiled])
    p.add_argument("--checkpoint", required=True, help="checkpoints/foundation/final (or a training .safetensors)")
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--image", help="start image (I2V)")
    start.add_argument("--prompt", help="scene text (T2V)")
    p.add_argument("--actions", required=True, help="inline action list or a file")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the model runs (auto: cuda when available)")
    p.add_argument("--label", action="store_true", help="label each chunk's motion with the instruction-following "
                   "metric and print commanded vs measured (stderr; `labels` in the JSON)")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("play", help="explore a checkpoint live in the browser (W/A/S/D, arrows or mouse)",
                       parents=[profiled],
                       description="Serves a page on which the held keys drive the world model chunk by chunk "
                       "(the checkpoint's recorded schedule, TSCM-bounded history). Start: --image, --prompt, or "
                       "a held-out world's first frame. A non-loopback --host needs --token (or YUME_PLAY_TOKEN).")
    p.add_argument("--checkpoint", required=True, help="a local exported model directory, e.g. "
                   "runs/tiny/checkpoints/distill/final")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--image", help="start image (default: a held-out world's first frame)")
    start.add_argument("--prompt", help="scene text (T2V start)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", default=None, help="required by the WebSocket handshake (default $YUME_PLAY_TOKEN)")
    p.add_argument("--max-sessions", type=int, default=4, help="browser tabs served at once (default 4)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: the profile's sampler.seed)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--history-frames", type=int, default=256, help="latent history frames a session keeps when "
                   "the profile sets no sampler.max_history_frames (default 256; 0 keeps all: memory then grows)")
    p.set_defaults(fn=cmd_play)

    p = sub.add_parser("model", help="world model utilities", parents=[profiled])
    p.add_argument("action", choices=["info"])
    p.add_argument("profile_name", nargs="?", default=None, metavar="PROFILE",
                   help="profile name or .yaml (same as --profile)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(fn=cmd_model)

    p = sub.add_parser("check", help="pre-flight check: models, data, work directory, Ray, Prefect, VBench",
                       parents=[profiled], description="Check everything the profile needs before spending GPU "
                       "time: one table with ok / fail and the fix for each; exits 1 on any failure. `yume demo` "
                       "and the retrain flow run the same check before their first stage.")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("config", help="the resolved profile", parents=[profiled],
                       description="Print the profile after --set overrides and validation, with its config hash "
                       "(the hash every manifest row and run record carries).")
    p.add_argument("action", choices=["show"])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout (YAML otherwise)")
    p.set_defaults(fn=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_prefect_defaults()  # before any subcommand imports prefect
    # Logs go to stderr so that --json output on stdout stays machine-readable.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # one INFO line per Prefect API request would bury the stages' own progress
        logging.getLogger("httpx").setLevel(logging.WARNING)
    from yume.config import ConfigError
    from yume.datasets.manifest import ManifestError
    from yume.datasets.sekai import SekaiError
    from yume.tasks.actions import TrajectoryError
    from yume.errors import StateFileError
    from yume.workdir_lock import WorkdirLockedError

    try:
        return args.fn(args)
    except (ConfigError, TrajectoryError, ManifestError, SekaiError, StateFileError, WorkdirLockedError) as e:
        # A user error: one line naming the cause (the traceback only with -v).
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_WORKDIR_BUSY if isinstance(e, WorkdirLockedError) else 2


if __name__ == "__main__":
    sys.exit(main())
