"""Ultralytics YOLO end to end (marker `ultralytics`; make test-ultralytics installs the extra in its own venv).

YOLOv8n and YOLO11n built from their yaml (random init, nothing downloaded) pruned at ratio 0.5: `result.module` is
the caller's DetectionModel, its outputs equal `result.model`'s in float64, it predicts on the package's sample images
inside a YOLO object; ultralytics' trainer fine-tunes it one epoch on a dataset made here from those images without
rebuilding it from the yaml (every parameter shape measured before and after); the checkpoints it writes and
`YOLO.save` writes reload with `YOLO(path)` in the pruned shapes; the CLI prunes a bundled yaml name and a .pt.
ultralytics is kept off the network (YOLO_OFFLINE, no auto-install, no telemetry, settings in a temporary directory,
a local font where its dataset check would download Arial.ttf), and every test fails if this process or a CLI
subprocess resolves a host name or connects anywhere.
"""
import copy
import json
import os
import shutil

import pytest
import torch

import graphprune
from cli_support import assert_one_line_error, run_cli
from offline_support import offline  # noqa: F401  (autouse: every test fails on any network use)
from conftest import without_dtype_asserts
from graphprune.integrations.ultralytics import keep_model
from graphprune.targets import Target
from graphprune.verify import max_exactness_error

pytestmark = pytest.mark.ultralytics

IMGSZ = 256  # the example input's side: a multiple of the largest stride (32)
# hand-written boxes (class cx cy w h, normalised) for the two sample photographs: COCO's person 0, bus 5, tie 27
LABELS = {"bus": ["5 0.50 0.47 0.98 0.52", "0 0.19 0.64 0.26 0.52", "0 0.33 0.62 0.16 0.46", "0 0.93 0.64 0.14 0.50"],
          "zidane": ["0 0.74 0.57 0.41 0.86", "0 0.29 0.70 0.47 0.60", "27 0.58 0.49 0.05 0.28"]}


@pytest.fixture(scope="module")
def ultralytics(tmp_path_factory):
    """ultralytics, imported offline: settings in a temporary directory, no auto-install, no telemetry, and a font
    in place where ultralytics would download Arial.ttf (its dataset check fetches one otherwise)."""
    config = tmp_path_factory.mktemp("ultralytics-settings")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("YOLO_OFFLINE", "1")
        patch.setenv("YOLO_AUTOINSTALL", "false")
        patch.setenv("YOLO_CONFIG_DIR", str(config))
        module = pytest.importorskip("ultralytics")
        module.settings.update({"sync": False, "runs_dir": str(tmp_path_factory.mktemp("runs")),
                                "datasets_dir": str(tmp_path_factory.mktemp("datasets"))})
        from matplotlib import font_manager
        from ultralytics.utils import USER_CONFIG_DIR

        shutil.copy(font_manager.findfont("DejaVu Sans"), USER_CONFIG_DIR / "Arial.ttf")
        yield module


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module", params=["yolov8n", "yolo11n"])
def pruned(request, ultralytics):
    """(name, dense DetectionModel, example input, PruneResult) at ratio 0.5."""
    model = ultralytics.YOLO(f"{request.param}.yaml").model.eval()
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    return request.param, model, x, graphprune.prune_graph(model, x, ratio=0.5)


def test_pruned_yolo_is_a_smaller_detection_model_equal_to_the_graph(pruned, ultralytics):
    from ultralytics.nn.tasks import DetectionModel

    name, model, x, result = pruned
    module = result.module
    assert type(module) is DetectionModel and module is not model
    assert _params(module) == _params(result.model) == result.report.params_after
    assert result.report.params_after < 0.6 * result.report.params_before == 0.6 * _params(model)
    mine, graph = _shapes(module), _shapes(result.model)  # the graph holds its lifted constants too (`stride`)
    assert {name for name, _ in module.named_parameters()} <= mine.keys() & graph.keys()
    assert {k: mine[k] for k in mine.keys() & graph.keys()} == {k: graph[k] for k in mine.keys() & graph.keys()}
    with torch.no_grad():
        got = graphprune.agreement.output_tensors(copy.deepcopy(module).double()(x.double()))
        want = graphprune.agreement.output_tensors(without_dtype_asserts(result.model).double()(x.double()))
    assert len(got) == len(want) > 1
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-9)
    assert max_exactness_error(model, (x,), result) <= 1e-5


def test_every_c2f_layer_lands_on_the_avx512_step(ultralytics):
    """With ONNX Runtime's AVX-512 steps (16 for convs), the C2f blocks keep equal chunk halves AND every one of
    their convs on the step: the halves are equalised before the layers are aligned (YOLOv8n's head C2f once kept
    95 of 96 channels: its bottleneck's conv at 31)."""
    from ultralytics.nn.modules.block import C2f

    model = ultralytics.YOLO("yolov8n.yaml").model.eval()
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    target = Target("ort-x86/avx512", dense_conv=16, grouped_conv=16, linear=8, one_block=True)
    module = graphprune.prune_graph(model, x, ratio=0.5, target=target).module
    widths = {f"{name}.{inner}": conv.out_channels for name, block in module.named_modules() if isinstance(block, C2f)
              for inner, conv in block.named_modules() if isinstance(conv, torch.nn.Conv2d)}
    assert len(widths) > 20 and all(w % 16 == 0 for w in widths.values()), widths


def test_pruned_yolo_predicts_on_the_sample_images(pruned, ultralytics):
    name, _, _, result = pruned
    yolo = ultralytics.YOLO(f"{name}.yaml")
    yolo.model = copy.deepcopy(result.module)  # the predictor fuses BN into the convs of the module it runs
    images = [str(ultralytics.utils.ASSETS / f"{n}.jpg") for n in LABELS]
    found = yolo.predict(images, imgsz=320, conf=0.0, device="cpu", verbose=False)
    assert len(found) == 2
    for image, got in zip(images, found):
        assert got.path == image and got.boxes.data.shape[1] == 6 and len(got.boxes) > 0
    ran = yolo.predictor.model.model  # the module the predictor ran (BN fused into the convs, as for any YOLO)
    assert type(ran) is type(result.module) and _params(ran) < _params(result.module)
    widths = {n: (m.in_channels, m.out_channels) for n, m in ran.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert widths == {n: (m.in_channels, m.out_channels) for n, m in result.module.named_modules()
                      if isinstance(m, torch.nn.Conv2d)}


TRAIN = dict(epochs=1, imgsz=64, batch=2, workers=0, device="cpu", amp=False, plots=False, verbose=False)


def _dataset(root, names: int) -> str:
    """A YOLO-format dataset of the two sample photographs with the boxes above (train and val alike); its yaml."""
    from ultralytics.utils import ASSETS

    assert all((ASSETS / f"{name}.jpg").is_file() for name in LABELS), f"ultralytics ships no sample images in {ASSETS}"
    for kind in ("images", "labels"):
        (root / kind / "train").mkdir(parents=True)
    for name, boxes in LABELS.items():
        shutil.copy(ASSETS / f"{name}.jpg", root / "images" / "train" / f"{name}.jpg")
        (root / "labels" / "train" / f"{name}.txt").write_text("\n".join(boxes) + "\n")
    classes = "".join(f"  {k}: class{k}\n" for k in range(names))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n{classes}")
    return str(root / "data.yaml")


def test_the_trainer_fine_tunes_the_pruned_model_and_its_checkpoints_reload_pruned(pruned, ultralytics, tmp_path):
    name, model, _, result = pruned
    yolo = ultralytics.YOLO(f"{name}.yaml")
    yolo.model = copy.deepcopy(result.module)
    shapes, count, before = _shapes(yolo.model), _params(yolo.model), copy.deepcopy(yolo.model.state_dict())
    assert count < 0.6 * _params(model)
    yolo.train(data=_dataset(tmp_path / "data", model.model[-1].nc), trainer=keep_model(yolo), **TRAIN,
               project=str(tmp_path / "runs"), name="ft")
    assert _shapes(yolo.model) == shapes and _params(yolo.model) == count  # YOLO.train reloaded it from best.pt
    trained = yolo.model.state_dict()
    assert any(not torch.equal(trained[k].float(), before[k].float()) for k in before if before[k].is_floating_point())
    last = tmp_path / "runs" / "ft" / "weights" / "last.pt"
    again = ultralytics.YOLO(str(last))
    assert _shapes(again.model) == shapes and _params(again.model) == count
    for key, value in again.model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    # a YOLO loaded from a .pt goes through get_model(weights=...): it trains on as it is
    again.train(data=str(tmp_path / "data" / "data.yaml"), trainer=keep_model(again), **TRAIN,
                project=str(tmp_path / "runs"), name="ft2")
    assert _shapes(again.model) == shapes and _params(again.model) == count


def test_keep_model_refuses_a_dataset_with_another_class_count(pruned, ultralytics, tmp_path):
    name, _, _, result = pruned
    yolo = ultralytics.YOLO(f"{name}.yaml")
    yolo.model = copy.deepcopy(result.module)
    with pytest.raises(graphprune.GraphPruneError, match=r"detects 80 classes but the dataset .* has 28: prune a "):
        yolo.train(data=_dataset(tmp_path / "data", 28), trainer=keep_model(yolo), **TRAIN,
                   project=str(tmp_path / "runs"), name="nc")


def test_yolo_save_writes_a_checkpoint_that_reloads_pruned(pruned, ultralytics, tmp_path):
    name, _, x, result = pruned
    yolo = ultralytics.YOLO(f"{name}.yaml")
    yolo.model = copy.deepcopy(result.module)
    yolo.save(str(tmp_path / "pruned.pt"))
    reloaded = ultralytics.YOLO(str(tmp_path / "pruned.pt")).model.eval()
    assert _shapes(reloaded) == _shapes(result.module) and _params(reloaded) == result.report.params_after
    half = copy.deepcopy(result.module).half().float().eval()  # ultralytics checkpoints hold float16 weights
    with torch.no_grad():
        for a, b in zip(graphprune.agreement.output_tensors(reloaded(x)), graphprune.agreement.output_tensors(half(x))):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("source", ["yaml", "pt"])
def test_the_cli_prunes_a_bundled_yaml_name_and_a_saved_checkpoint(ultralytics, tmp_path, source):
    model = "yolov8n.yaml"
    if source == "pt":
        ultralytics.YOLO(model).save(str(tmp_path / "v8n.pt"))
        model = "v8n.pt"
    proc = run_cli("prune", model, "--ratio", "0.5", "--input-shape", f"1,3,{IMGSZ},{IMGSZ}", "--out", "out",
                   cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["native"]["format"] == "ultralytics"
    from ultralytics.nn.tasks import torch_safe_load

    path = str(tmp_path / "out" / report["native"]["file"])
    torch_safe_load(path, safe_only=True)  # ultralytics' weights_only load of known classes takes it
    saved = ultralytics.YOLO(path).model
    assert _params(saved) == report["report"]["params_after"] < 0.6 * report["report"]["params_before"]
    assert report["report"]["params_before"] == _params(ultralytics.YOLO("yolov8n.yaml").model)


def test_the_cli_recovers_a_pruned_yolo_and_saves_the_recovered_detection_model(ultralytics, tmp_path):
    """--recover-steps hands back the DetectionModel itself: that is what ultralytics.pt holds, recovered."""
    images = tmp_path / "images"
    images.mkdir()
    for photo in ("bus.jpg", "zidane.jpg"):
        for copy in range(2):
            shutil.copy(ultralytics.utils.ASSETS / photo, images / f"{copy}-{photo}")
    proc = run_cli("prune", "yolov8n.yaml", "--ratio", "0.5", "--input-shape", f"1,3,{IMGSZ},{IMGSZ}", "--images",
                   "images", "--recover-steps", "2", "--batch-size", "2", "--out", "out", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["native"]["format"] == "ultralytics" and report["recovery"]["steps"] == 2
    saved = ultralytics.YOLO(str(tmp_path / "out" / report["native"]["file"])).model
    assert _params(saved) == report["report"]["params_after"]
    program = torch.export.load(str(tmp_path / "out" / "model.pt2")).module()
    assert {k: v.shape for k, v in program.state_dict().items() if k.endswith("weight")} == \
        {k: v.shape for k, v in saved.state_dict().items() if k.endswith("weight")}


def test_the_cli_names_a_config_ultralytics_does_not_ship_in_one_line(ultralytics, tmp_path):
    assert_one_line_error(run_cli("prune", "yolov8q.yaml", "--ratio", "0.5", "--out", "out", cwd=str(tmp_path)),
                          "MODEL 'yolov8q.yaml' is no file here, nor a config ultralytics ships")
    assert not (tmp_path / "out").exists()


def test_the_cli_keeps_ultralytics_offline_by_itself(ultralytics, tmp_path, monkeypatch):
    """Without YOLO_OFFLINE in the environment, importing ultralytics resolves two host names (its connectivity
    check): the command line sets it for its own process; the guard above fails the test on any lookup."""
    monkeypatch.delenv("YOLO_OFFLINE")
    proc = run_cli("explain", "yolov8n.yaml", "--input-shape", "1,3,64,64", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "47 groups" in proc.stdout
