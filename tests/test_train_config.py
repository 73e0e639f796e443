"""train.loop.config: defaults are the paper's Table 4 run, presets, overrides, and one-line errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from train import main as train_main
from train.loop import config as C
from train.loop import trainer


def test_defaults_are_the_table4_run() -> None:
    cfg = C.parse_args(["--backbone=resnet50", "--res=28"])
    assert (cfg.model.backbone, cfg.model.res, cfg.model.output, cfg.reg, cfg.sigma, cfg.reg_coeff) == (
        "resnet50", 28, "dsnt", "js", 1.0, 1.0)
    assert (cfg.dataset, cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_milestones, cfg.lr_gamma) == (
        "mpii", 120, 32, 2.5e-4, (60, 90), 0.1)
    assert (cfg.model.input_size, cfg.model.activation, cfg.augment, cfg.precision) == (224, "softmax", True, "float32")
    assert C.parse_args([]) == cfg
    assert C.parse_args(["--preset=table4-r50-dsntr"]) == dataclasses.replace(cfg, preset="table4-r50-dsntr")


@pytest.mark.parametrize("argv, batch", [
    (["--backbone=hg2"], 6), (["--backbone=resnet101", "--res=28"], 24), (["--backbone=resnet101", "--res=14"], 32),
    (["--backbone=resnet50", "--res=56"], 12), (["--backbone=resnet34", "--res=56"], 32),
    (["--backbone=hg8", "--batch-size=4"], 4),
])
def test_paper_batch_sizes(argv: list[str], batch: int) -> None:
    assert C.parse_args(argv).batch_size == batch


def test_hourglass_defaults() -> None:
    cfg = C.parse_args(["--backbone=hg4"])
    assert (cfg.model.res, cfg.model.input_size, cfg.batch_size) == (None, 256, 6)


def test_regulariser_default_follows_output() -> None:
    assert C.parse_args(["--output=hm"]).reg == "none"
    assert C.parse_args(["--output=fc"]).reg == "none"
    assert C.parse_args(["--output=dsnt"]).reg == "js"
    assert C.parse_args(["--output=dsnt", "--reg=none"]).reg == "none"
    # An explicit --output re-derives the preset's regulariser unless --reg is given too.
    assert C.parse_args(["--preset=fig8-r18-28", "--output=hm"]).reg == "none"


def test_presets_cover_the_paper_grid() -> None:
    names = set(C.PRESETS)
    assert sum(n.startswith("fig7-") for n in names) == 16
    assert sum(n.startswith("fig8-") for n in names) == 11 and "fig8-r101-56" not in names
    assert sum(n.startswith("fig9-") for n in names) == 12
    assert sum(n.startswith("table2-") for n in names) == 4
    assert sum(n.startswith("fig11-") for n in names) == 12
    assert {"table3-none", "table3-var-s1", "table3-kl-s2", "table3-js-s1", "synthetic-cpu"} <= names
    for name in names:  # every preset resolves to a valid configuration
        C.resolve({"preset": name})


def test_preset_values_and_overrides() -> None:
    var = C.resolve({"preset": "table3-var-s1"})
    assert (var.model.backbone, var.model.res, var.reg, var.reg_coeff, var.sigma) == ("resnet34", 28, "var", 100.0, 1.0)
    fig11 = C.resolve({"preset": "fig11-hm-n2048"})
    assert (fig11.model.output, fig11.reg, fig11.train_samples, fig11.augment) == ("hm", "none", 2048, False)
    hg = C.resolve({"preset": "fig9-hg8-dsntr"})
    assert (hg.model.backbone, hg.model.res, hg.batch_size, hg.reg) == ("hg8", None, 6, "js")
    fig7 = C.resolve({"preset": "fig7-r34-7-fc"})
    assert (fig7.model.res, fig7.model.output, fig7.reg) == (7, "fc", "none")
    overridden = C.parse_args(["--preset=fig7-r34-56-dsntr", "--lr=1e-3", "--epochs=3"])
    assert (overridden.model.res, overridden.lr, overridden.epochs, overridden.reg) == (56, 1e-3, 3, "js")


@pytest.mark.parametrize("argv, message", [
    (["--backbone=hg2", "--res=28"], "--res applies to ResNets only"),
    (["--res=20"], "--res must be one of 7, 14, 28, 56"),
    (["--output=hm", "--reg=js"], "use --reg=none with --output=hm"),
    (["--batch-size=0"], "--batch-size must be a positive integer"),
    (["--lr-milestones=90,60"], "--lr-milestones must be increasing"),
    (["--model-overrides=[1]"], "--model-overrides must be a JSON object"),
    (["--backbone=hg1", "--pretrained=x.pth"], "--pretrained loads torchvision ResNet weights"),
    (["--backbone=resnet20"], "invalid choice"),
    (["--cache-mb=-1"], "--cache-mb must be >= 0"),
    (["--hm-amplitude=10"], "--hm-amplitude applies to --output=hm only"),
    (["--preset=fig7-r34-56-fc", "--hm-amplitude=10"], "--hm-amplitude applies to --output=hm only"),
    (["--output=hm", "--hm-amplitude=0"], "--hm-amplitude must be a finite number > 0"),
    (["--output=hm", "--hm-amplitude=-1"], "--hm-amplitude must be a finite number > 0"),
    (["--output=hm", "--hm-amplitude=nan"], "--hm-amplitude must be a finite number > 0"),
    (["--output=hm", "--hm-amplitude=inf"], "--hm-amplitude must be a finite number > 0"),
])
def test_impossible_combinations_fail_with_one_line(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        C.parse_args(argv)
    assert exc.value.code == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert message in err_lines[-1]
    assert not any("Traceback" in line for line in err_lines)


def test_batch_not_divisible_by_devices(tmp_path, capsys) -> None:
    # conftest gives this process 2 CPU devices.
    status = train_main.main(["--batch-size=3", f"--workdir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == ["python -m train.main: error: --batch-size=3 does not divide over the 2 devices; "
                   "use a multiple of 2"]


def test_missing_mpii_names_files_and_fixes(tmp_path, capsys) -> None:
    data_dir = tmp_path / "tfds"
    status = train_main.main(["--dataset=mpii", f"--data-dir={data_dir}", f"--workdir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert f"{data_dir}/mpii_human_pose/canvas576/1.0.0" in err[0]
    assert "dataset_info.json" in err[0] and "mpii_human_pose-{train,validation}.array_record" in err[0]
    assert "python -m data.prepare mpii --manual-dir" in err[0] and "--dataset=synthetic" in err[0]


def test_missing_pretrained_file_says_where_to_get_it(tmp_path) -> None:
    cfg = C.resolve({"backbone": "resnet34", "pretrained": str(tmp_path / "resnet34.pth")})
    with pytest.raises(FileNotFoundError, match="resnet34-b627a593.pth") as exc:
        trainer.load_pretrained(cfg, state=None)
    assert "cannot be downloaded" in str(exc.value)


def test_json_round_trip_and_resume_compatibility() -> None:
    cfg = C.parse_args(["--preset=synthetic-cpu", "--seed=3"])
    assert C.Config.from_json(cfg.to_json()) == cfg
    C.check_resumable(cfg, dataclasses.replace(cfg, epochs=cfg.epochs + 5, eval_every=2))  # allowed
    with pytest.raises(ValueError, match=r"backbone: 'resnet18' → 'resnet34'.*--workdir"):
        C.check_resumable(cfg, dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone="resnet34")))
    with pytest.raises(ValueError, match="batch_size"):
        C.check_resumable(cfg, dataclasses.replace(cfg, batch_size=16))


def test_config_json_of_the_flat_layout_still_reads() -> None:
    """A config.json written before the model settings were nested (flat flags, overrides as a JSON string)
    reads as the same configuration, so older run directories resume and predict."""
    cfg = C.parse_args(["--preset=synthetic-cpu"])
    flat = json.loads(cfg.to_json())
    model = flat.pop("model")
    flat.update(backbone=model["backbone"], res=model["res"], output=model["output"],
                activation=model["activation"], input_size=model["input_size"],
                model_overrides=json.dumps(model["overrides"]))
    assert C.Config.from_json(json.dumps(flat)) == cfg


def test_model_settings_are_checked_once_and_named_by_their_flag() -> None:
    with pytest.raises(ValueError, match=r"^--model-overrides \['depth'\] are not ResNetPose fields"):
        C.resolve({"model_overrides": '{"depth": 2}'})
    with pytest.raises(ValueError, match=r"^--input-size must be a multiple of 64 px for an hourglass"):
        C.resolve({"backbone": "hg1", "input_size": 100})
    # The flag's JSON text is parsed once, into the frozen model config; presets give mappings directly.
    cfg = C.resolve({"model_overrides": '{"widths": [8, 8, 8, 8]}'})
    assert cfg.model.overrides == (("widths", (8, 8, 8, 8)),) and hash(cfg)


def test_pretrained_weights_replace_the_trunk_and_reset_the_optimiser(tmp_path) -> None:
    import jax
    import numpy as np

    from dsnt_jax.models import create_model, save_torchvision_resnet
    from train.loop import state as state_lib

    tiny = '{"widths": [8, 8, 8, 8], "stem_width": 8, "stage_sizes": [1, 1, 1, 1]}'
    cfg = C.resolve({"backbone": "resnet18", "res": 28, "input_size": 32, "model_overrides": tiny,
                     "pretrained": str(tmp_path / "trunk.npz")})
    model = create_model("resnet18", res=28, **dict(cfg.model.overrides))
    source = state_lib.create_train_state(model, 1, 32, state_lib.torch_rmsprop(1e-3))
    save_torchvision_resnet(cfg.pretrained, {"params": source.params, "batch_stats": source.batch_stats})
    target = state_lib.create_train_state(model, 2, 32, state_lib.torch_rmsprop(1e-3))
    loaded = trainer.load_pretrained(cfg, target)
    for a, b in zip(jax.tree_util.tree_leaves(source.params["backbone"]),
                    jax.tree_util.tree_leaves(loaded.params["backbone"]), strict=True):
        np.testing.assert_array_equal(a, b)
    # The head (not in a torchvision file) keeps the target's initialisation.
    np.testing.assert_array_equal(loaded.params["hm_conv"]["kernel"], target.params["hm_conv"]["kernel"])
    assert not np.array_equal(source.params["hm_conv"]["kernel"], target.params["hm_conv"]["kernel"])


def test_run_label_marks_a_network_changed_by_model_overrides() -> None:
    paper = C.resolve({"preset": "table4-r50-dsntr"})
    assert paper.run_name() == "resnet50@28 dsnt+js"
    cpu = C.parse_args(["--preset=synthetic-cpu"])
    assert cpu.run_name() == "resnet18@28 (custom) dsnt+js"


def test_flip_test_validation_scores_both_protocols(tmp_path, capsys) -> None:
    """--flip-test: the table has the plain and the flip row; metrics 'val' is the flip one, and both equal
    what train.evaluate computes from the saved checkpoint."""
    import json

    import numpy as np

    import data.synthetic_pose
    from train import evaluate

    data_dir = str(tmp_path / "tfds")
    data.synthetic_pose.build(data_dir, num_train=16, num_val=8, canvas_size=48, num_workers=1)
    tiny = '{"widths": [8, 8, 8, 8], "stem_width": 8, "stage_sizes": [1, 1, 1, 1], "upsample": 8}'
    cfg = C.resolve({"dataset": "synthetic", "data_dir": data_dir, "synthetic_train": 16, "synthetic_val": 8,
                     "synthetic_canvas": 48, "backbone": "resnet18", "res": 28, "input_size": 32,
                     "batch_size": 8, "epochs": 1, "lr": 1e-3, "model_overrides": tiny, "flip_test": True,
                     "workdir": str(tmp_path / "run")})
    assert train_main.train(cfg) == 0
    table = capsys.readouterr().out
    assert "resnet18@28 (custom) dsnt+js flip" in table and "mean pose (baseline)" in table
    assert "resnet18@28 (custom) dsnt+js  " in table  # the plain row as well
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    logged = {r["split"]: r for r in records if r["split"].startswith("val")}
    assert set(logged) == {"val", "val_no_flip"}
    for flip, split in ((True, "val"), (False, "val_no_flip")):
        result, _, _ = evaluate.evaluate_checkpoint(cfg.workdir, flip=flip)
        summary = result.summary()
        np.testing.assert_allclose([logged[split][k] for k in ("total", "auc")], [summary["total"], summary["auc"]])


def test_hm_amplitude_is_the_papers_unless_set() -> None:
    """Every preset keeps the paper's HM target (peak 1); --hm-amplitude sets the peak of HM runs."""
    assert C.Config.hm_amplitude == 1.0
    assert all(C.resolve({"preset": name}).hm_amplitude == 1.0 for name in C.PRESETS)
    cfg = C.parse_args(["--preset=fig7-r34-56-hm", "--hm-amplitude=10"])
    assert (cfg.model.output, cfg.hm_amplitude) == ("hm", 10.0)
    assert C.Config.from_json(cfg.to_json()) == cfg
    # config.json files written before the option existed read as the paper's amplitude.
    old = cfg.to_json().replace('"hm_amplitude": 10.0,', "")
    assert "hm_amplitude" not in old and C.Config.from_json(old).hm_amplitude == 1.0


def test_loader_processes_default_to_the_machine_and_a_resumed_run_keeps_its_number(monkeypatch) -> None:
    """--num-workers unset: none with a CPU-only JAX, cores − 1 (at most 32) with an accelerator; a resumed run
    keeps the number in its config.json, since its data-iterator state depends on it."""
    from train.loop import data as data_lib

    cfg = C.parse_args(["--preset=synthetic-cpu"])
    assert cfg.num_workers is None and data_lib.default_num_workers() == 0  # this CPU-only machine
    assert trainer.pin_num_workers(cfg, None).num_workers == 0
    assert trainer.pin_num_workers(cfg, dataclasses.replace(cfg, num_workers=3)).num_workers == 3
    explicit = dataclasses.replace(cfg, num_workers=5)
    assert trainer.pin_num_workers(explicit, dataclasses.replace(cfg, num_workers=3)).num_workers == 5
    # An unset --num-workers continues any run (it adopts the saved number); a different explicit one does not.
    C.check_resumable(dataclasses.replace(cfg, num_workers=3), cfg)
    with pytest.raises(ValueError, match="num_workers: 3 → 5"):
        C.check_resumable(dataclasses.replace(cfg, num_workers=3), explicit)
    monkeypatch.setattr(data_lib.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(data_lib.os, "sched_getaffinity", lambda _: set(range(16)))
    assert data_lib.default_num_workers() == 15
    monkeypatch.setattr(data_lib.os, "sched_getaffinity", lambda _: set(range(128)))
    assert data_lib.default_num_workers() == data_lib.MAX_DEFAULT_WORKERS
