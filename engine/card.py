"""The reproduction card of a result: every setting a reader needs before comparing the number with another.

Most failures to reproduce a published video-SSL number come from settings the number never stated:
split 1 or the mean of three, how many videos of a data set copy were actually there, epochs, GPUs ×
per-GPU batch, whether contrastive negatives were gathered across processes, finetuning or a linear
probe, clips and crops at test time, which checkpoint, and the precision each stage ran in (``--amp auto``
is bf16 on some machines and fp32 on others, and bf16 features move R@k, kNN and probe figures slightly).
A card states them all, from the files the runs wrote and never typed by hand: the result's own
configuration, the ``config.json`` of the finetuning and pretraining runs it descends from (found through
the checkpoint paths), and the split CSVs.

``write_card(results_path)`` writes ``card.json`` beside ``test_results.json`` or ``retrieval.json``;
``summary_line(card)`` is its one-line form for the results table.
"""

from __future__ import annotations

import json
from pathlib import Path

from utils.atomic import write_text

CARD_NAME = "card.json"
EVAL_CLIPS, EVAL_CROPS = 10, 1  # dataset.video_dataset.NUM_EVAL_CLIPS, one centre crop
# what each resolved --amp mode computes in (utils.precision prints the same names; this module stays free of torch)
PRECISIONS = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _run_config(checkpoint: str | None, recorded: dict | None = None) -> tuple[dict, dict] | None:
    """(configuration, git revision) of the run that wrote ``checkpoint``: its folder's config.json, else the
    configuration ``recorded`` in the checkpoint itself (revision unknown); None when neither exists."""
    if not checkpoint:
        return None
    info = _read_json(Path(checkpoint).parent / "config.json")
    if info is not None and isinstance(info.get("config"), dict):
        return info["config"], info.get("git") or {}
    return (recorded, {}) if recorded else None


def _listed_videos(config: dict, kind: str) -> int | None:
    """Rows of the train or test CSV of the configuration's split: what the data set copy lists."""
    from dataset.local_dataset import resolve_dataset  # data-set code only where a card is written
    try:
        paths = resolve_dataset(config["dataset"], config.get("data_root"), config.get("frame_root"),
                                config.get("csv_dir"), config.get("flow_root"))
        with open(paths.split_csv(kind, int(config.get("split", 1)))) as f:
            return sum(1 for line in f if line.strip())
    except (OSError, ValueError, KeyError):
        return None


def precision(config: dict) -> str:
    """The precision a run computed in: the entry scripts record ``--amp`` as resolved on their device."""
    amp = config.get("amp")
    if amp is None:
        return "not recorded"
    return PRECISIONS.get(amp, f"--amp {amp} (not resolved when recorded)")


def _clip(config: dict) -> dict:
    # runs from before --clip-input saw RGB
    return {**{key: config.get(key) for key in ("num_frames", "stride", "size")},
            "input": config.get("clip_input") or "rgb"}


def _budget(config: dict) -> dict:
    """Epochs, and the optimizer steps they came to (recorded since --steps; None before)."""
    resolved = config.get("resolved") or {}
    return {"epochs": resolved.get("epochs", config.get("epochs")), "steps": resolved.get("steps")}


def _batches(config: dict) -> dict:
    resolved = config.get("resolved") or {}
    processes = resolved.get("world_size")
    return {"processes": processes, "per_process_batch": config.get("batch_size"),
            "global_batch": resolved.get("global_batch_size")}


def method_fields(config: dict) -> dict:
    """The mode, the source of the contrastive negatives and the clip settings of a pretraining run, as its method
    states them (``card_fields``); a run of no known method (the random-weights reference) names its mode only."""
    from model import METHODS
    processes = (config.get("resolved") or {}).get("world_size") or 1
    method = METHODS.get(config.get("model"))
    if method is None:
        return {"mode": config.get("mode"), "negatives": "unknown", "clip": {}}
    return method.card_fields(config, processes)


def _pretraining(config: dict, git: dict, checkpoint_epoch: int | None) -> dict:
    model, fields = config.get("model"), method_fields(config)
    return {"model": model, "mode": fields["mode"], "net": config.get("net"),
            "base_width": config.get("base_width"), "dataset": config.get("dataset"), "split": config.get("split"),
            **_budget(config), "checkpoint_epoch": checkpoint_epoch, **_batches(config),
            "negatives": fields["negatives"], "sync_bn": config.get("sync_bn"), "precision": precision(config),
            "clip": {**_clip(config), **fields["clip"]},
            "videos": {"listed": _listed_videos(config, "train"),
                       "used": (config.get("resolved") or {}).get("train_videos")},
            "seed": config.get("seed"), "revision": git}


def _finetuning(config: dict, git: dict, checkpoint_epoch: int | None) -> dict:
    resolved = config.get("resolved") or {}
    probe = config.get("train_what") == "last"
    return {"what": "linear probe (backbone frozen)" if probe else "all layers",
            "batch_norm": "frozen (eval mode)" if probe else
            ("synchronised across processes" if config.get("sync_bn") else "batch statistics of each process"),
            "dataset": config.get("dataset"), "split": config.get("split"), **_budget(config),
            "checkpoint_epoch": checkpoint_epoch, **_batches(config), "clip": _clip(config),
            "precision": precision(config),  # validation too
            "videos": {"listed": _listed_videos(config, "train"), "train_used": resolved.get("train_videos"),
                       "validation_hold_out": resolved.get("val_videos")},
            "seed": config.get("seed"), "revision": git}


def build_card(results_path: str | Path) -> dict:
    """The card of ``test_results.json`` (a finetuned classifier's test) or ``retrieval.json`` (frozen
    features: retrieval, kNN, linear probe), from that file and the configurations it leads to."""
    results_path = Path(results_path)
    results = _read_json(results_path)
    if results is None:
        raise ValueError(f"{results_path}: cannot read it as a JSON object; re-run the step that writes it")
    config = results.get("config") or {}
    retrieval = results_path.name == "retrieval.json"
    card: dict = {"result": results_path.name, "checkpoint": results.get("checkpoint"), "pretrained_from": None,
                  "pretraining": None, "finetuning": None}

    if retrieval:
        card["metrics"] = {k: results.get(k) for k in ("R@1", "R@5", "R@10", "R@20", "R@50", "knn_top1",
                                                       "linear_probe_top1") if k in results}
        card["evaluation"] = {
            "protocol": "frozen features: retrieval, kNN and linear probe (train split = gallery, test = queries)",
            "layer": results.get("layer"), "clips": EVAL_CLIPS, "crops": EVAL_CROPS,
            "aggregation": "mean feature over the clips of a video", "level": "video",
            "knn": results.get("knn"), "merge": results.get("merge_modality") if results.get("merge") else None,
            "precision": precision(config)}
        evaluated = {"train_listed": _listed_videos(config, "train"), "train_used": results.get("num_gallery"),
                     "test_listed": _listed_videos(config, "test"), "test_used": results.get("num_queries")}
        pretrain_ckpt, pretrain_epoch = results.get("checkpoint"), results.get("checkpoint_epoch")
        card["source"], card["pretrained_from"] = results.get("checkpoint_kind"), results.get("checkpoint")
    else:
        card["metrics"] = {k: results.get(k) for k in ("top1", "top5", "mean_class_accuracy") if k in results}
        card["evaluation"] = {
            "protocol": "finetuned classifier, 10-clip test", "clips": EVAL_CLIPS, "crops": EVAL_CROPS,
            "aggregation": f"mean of the {results.get('aggregate', 'softmax')} over the clips of a video",
            "level": "video", "tested_split": results.get("split"), "precision": precision(config)}
        evaluated = {"test_listed": _listed_videos(config, "test") if results.get("split") == "test" else None,
                     "test_used": results.get("num_videos")}
        finetune = _run_config(results.get("checkpoint"), results.get("checkpoint_config"))
        pretrain_ckpt = pretrain_epoch = None
        if finetune is not None:
            ft_config, ft_git = finetune
            card["finetuning"] = _finetuning(ft_config, ft_git, results.get("checkpoint_epoch"))
            pretrain_ckpt = ft_config.get("pretrain") if ft_config.get("pretrain") not in (None, "none") else None
            pretrain_epoch = (ft_config.get("resolved") or {}).get("pretrain_epoch")
            card["source"] = (ft_config.get("resolved") or {}).get("pretrain_kind")
            card["pretrained_from"] = ft_config.get("init_from") or pretrain_ckpt
    pretrain = _run_config(pretrain_ckpt, results.get("checkpoint_config") if retrieval else None)
    if pretrain is not None:
        card["pretraining"] = _pretraining(*pretrain, pretrain_epoch)
    card["data"] = {"dataset": config.get("dataset"), "split": config.get("split"), "videos": evaluated}
    card["clip"] = _clip(config)
    card["seeds"] = sorted({stage["seed"] for stage in (card["pretraining"], card["finetuning"])
                            if stage and stage.get("seed") is not None})
    card["revision"] = _revision([results.get("git") or {}] + [stage["revision"] for stage in
                                                             (card["pretraining"], card["finetuning"]) if stage])
    return card


def _revision(revisions: list[dict]) -> dict:
    """One code revision for the chain of runs, and whether every run came from it with a clean tree."""
    commits = {r.get("commit") for r in revisions}
    known = None not in commits and all(r.get("dirty") is not None for r in revisions)
    return {"commit": commits.pop() if len(commits) == 1 else sorted(c or "unknown" for c in commits),
            "clean": known and len(commits) <= 1 and not any(r.get("dirty") for r in revisions)}


def write_card(results_path: str | Path) -> Path:
    """Write ``card.json`` beside ``results_path``; returns its path."""
    path = Path(results_path).with_name(CARD_NAME)
    write_text(path, json.dumps(build_card(results_path), indent=2) + "\n")
    return path


def load_card(results_path: str | Path) -> dict:
    """The card beside ``results_path``, built from the files when an older run wrote none."""
    card = _read_json(Path(results_path).with_name(CARD_NAME))
    return card if card is not None else build_card(results_path)


def _count(value) -> str:
    return "not recorded" if value is None else str(value)


def _videos(counts: dict) -> str:
    listed, used = counts.get("listed"), counts.get("used")
    return _count(used) if listed in (None, used) else f"{_count(used)} of {listed} listed"


def summary_line(card: dict) -> str:
    """One line: data and split, pretraining, finetuning, evaluation, checkpoint, seeds, revision."""
    data = card["data"]
    videos = data["videos"]
    parts = [f"{data['dataset']} split {data['split']}"]
    pre, ft = card.get("pretraining"), card.get("finetuning")
    if pre and pre["model"] == "random init":
        parts.append(f"no pretraining (random weights, seed {pre['seed']})")
    elif pre:
        parts.append(f"pretrained {pre['model']} {pre['mode']} {pre['net']} on {pre['dataset']} "
                     f"({_videos(pre['videos'])} videos), {_budget_text(pre)}, "
                     f"{pre['processes']} × {pre['per_process_batch']} = {pre['global_batch']} per step, "
                     f"negatives: {pre['negatives']}, clip {_clip_text(pre['clip'])}, "
                     f"checkpoint after epoch {_count(pre['checkpoint_epoch'])}, {_precision_text(pre)}")
    else:
        parts.append(_unrecorded_source(card))
    if ft:
        parts.append(f"finetuned {ft['what']} ({ft['videos']['train_used']} videos, BN {ft['batch_norm']}), "
                     f"{_budget_text(ft)}, {ft['processes']} × {ft['per_process_batch']} = {ft['global_batch']}, "
                     f"clip {_clip_text(ft['clip'])}, checkpoint after epoch {_count(ft['checkpoint_epoch'])}, "
                     f"{_precision_text(ft)}")
    ev = card["evaluation"]
    tested = videos.get("test_used")
    parts.append(f"{ev['protocol']} on {tested}{'' if videos.get('test_listed') in (None, tested) else ' of ' + str(videos['test_listed'])} "
                 f"test videos, {ev['clips']} clips × {ev['crops']} centre crop, clip {_clip_text(card['clip'])}, "
                 f"{_precision_text(ev)}")
    seeds = card.get("seeds") or []
    parts.append(f"seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds)) or 'unknown'}")
    rev = card["revision"]
    if isinstance(rev["commit"], list):
        code = f"code from {len(rev['commit'])} revisions ({', '.join(c[:10] for c in rev['commit'])})"
    else:
        code = f"code {(rev['commit'] or 'unknown')[:10]}"
    parts.append(f"{code}, {'clean tree' if rev['clean'] else 'tree not clean or unknown'}")
    return "; ".join(parts)


def _unrecorded_source(card: dict) -> str:
    """Where the weights came from when no pretraining configuration describes them."""
    source, checkpoint = card.get("source"), card.get("pretrained_from")
    if source in (None, "none") and card.get("finetuning"):
        return "no pretraining (random initialisation)"
    if source == "no-learning reference":
        what = {"colour-stats": "the per-channel colour statistics of each clip",
                "motion-stats": "the optical-flow statistics of each clip"}.get(checkpoint, checkpoint)
        return f"no learning ({what})"
    return (f"weights from {checkpoint} ({source}); no configuration of the run that wrote them was found, so "
            "its settings are unknown")


def _budget_text(stage: dict) -> str:
    steps = stage.get("steps")
    return f"{stage['epochs']} epochs" + (f" ({steps} steps)" if steps else "")


def _precision_text(stage: dict) -> str:
    recorded = stage.get("precision")  # absent from the cards written before it was recorded
    return "precision not recorded" if recorded in (None, "not recorded") else f"in {recorded}"


def _clip_text(clip: dict) -> str:
    text = f"{clip.get('num_frames')}×{clip.get('size')}², stride {clip.get('stride')}"
    return text if clip.get("input", "rgb") == "rgb" else f"{text}, {clip['input']} input"
