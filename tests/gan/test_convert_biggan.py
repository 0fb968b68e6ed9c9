"""convert.py biggan-pytorch: BigGAN-PyTorch state dicts (published names and shapes, small widths) against an
independent float64 forward pass written on the source tensors from BigGAN-PyTorch's formulas."""

from __future__ import annotations

import argparse
import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import convert as convert_cli
import evaluate as evaluate_cli
import sample as sample_cli
import train as train_cli
from gan.checkpoint import latest_checkpoint, load_checkpoint
from gan.config import ModelConfig, load_config
from gan.convert_biggan import (
    ConversionError,
    convert,
    convert_discriminator,
    convert_generator,
    epsilons,
    infer_discriminator_fields,
    infer_generator_config,
    read_state_dict,
)
from gan.data import DatasetError, build_dataset
from gan.explorer import load_models
from gan.models import Generator, load_generator

from shared import ROOT, TINY_RUN, write_folder

SN_EPS, BN_EPS = 1e-6, 1e-5
# BigGAN.py's G_arch / D_arch: channel multipliers of `ch` per block, and G's block output sides.
G_IN = {32: [4, 4, 4], 64: [16, 16, 8, 4], 128: [16, 16, 8, 4, 2], 256: [16, 16, 8, 8, 4, 2]}
G_OUT = {32: [4, 4, 4], 64: [16, 8, 4, 2], 128: [16, 8, 4, 2, 1], 256: [16, 8, 8, 4, 2, 1]}
D_IN = {64: [0, 1, 2, 4, 8], 128: [0, 1, 2, 4, 8, 16]}  # 0: the image's 3 channels
D_OUT = {64: [1, 2, 4, 8, 16], 128: [1, 2, 4, 8, 16, 16]}


@pytest.fixture(autouse=True)
def one_thread():
    """Small float64 convolutions: one thread is several times faster than many on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Source state dicts with the published names and shapes


def _sn_layer(sd: dict, name: str, shape: tuple[int, ...], rng: torch.Generator, bias: bool = True) -> None:
    sd[f"{name}.weight"] = torch.randn(*shape, generator=rng) / math.sqrt(math.prod(shape[1:]))
    if bias:
        sd[f"{name}.bias"] = 0.1 * torch.randn(shape[0], generator=rng)
    sd[f"{name}.u0"] = torch.randn(1, shape[0], generator=rng)  # SN's stored power-iteration vector
    sd[f"{name}.sv0"] = torch.rand(1, generator=rng) + 0.5  # SN's singular-value log


def _stats(sd: dict, name: str, c: int, rng: torch.Generator) -> None:
    sd[f"{name}.stored_mean"] = 0.2 * torch.randn(c, generator=rng)
    sd[f"{name}.stored_var"] = torch.rand(c, generator=rng) + 0.5


def _attention(sd: dict, name: str, c: int, rng: torch.Generator) -> None:
    for part, (o, i) in {"theta": (c // 8, c), "phi": (c // 8, c), "g": (c // 2, c), "o": (c, c // 2)}.items():
        _sn_layer(sd, f"{name}.{part}", (o, i, 1, 1), rng, bias=False)
    sd[f"{name}.gamma"] = torch.tensor(0.8)


def biggan_g_state(res: int, ch: int, classes: int, dim_z: int, shared: int, hier: bool, cbn_bias: bool = False):
    """A BigGAN-PyTorch `Generator(G_shared=True, hier=hier, G_attn='64').state_dict()` lookalike."""
    rng = torch.Generator().manual_seed(res + ch)
    n = len(G_IN[res])
    chunk = dim_z // (n + 1) if hier else dim_z
    cond = shared + (chunk if hier else 0)
    sd = {"shared.weight": torch.randn(classes, shared, generator=rng)}
    _sn_layer(sd, "linear", (16 * ch * 16, chunk), rng)
    for i, (cin, cout) in enumerate(zip(G_IN[res], G_OUT[res])):
        cin, cout, b = cin * ch, cout * ch, f"blocks.{i}.0"
        _sn_layer(sd, f"{b}.conv1", (cout, cin, 3, 3), rng)
        _sn_layer(sd, f"{b}.conv2", (cout, cout, 3, 3), rng)
        _sn_layer(sd, f"{b}.conv_sc", (cout, cin, 1, 1), rng)
        for bn, c in (("bn1", cin), ("bn2", cout)):
            _sn_layer(sd, f"{b}.{bn}.gain", (c, cond), rng, bias=cbn_bias)
            _sn_layer(sd, f"{b}.{bn}.bias", (c, cond), rng, bias=cbn_bias)
            _stats(sd, f"{b}.{bn}", c, rng)
        if 8 * 2**i == 64:
            _attention(sd, f"blocks.{i}.1", cout, rng)
    last = G_OUT[res][-1] * ch
    sd["output_layer.0.gain"] = 1 + 0.1 * torch.randn(last, generator=rng)
    sd["output_layer.0.bias"] = 0.1 * torch.randn(last, generator=rng)
    _stats(sd, "output_layer.0", last, rng)
    _sn_layer(sd, "output_layer.2", (3, last, 3, 3), rng)
    return sd


def biggan_d_state(res: int, ch: int, classes: int) -> dict:
    """A BigGAN-PyTorch `Discriminator(D_attn='64', D_wide=True).state_dict()` lookalike."""
    rng = torch.Generator().manual_seed(7 * res + ch)
    sd: dict = {}
    for i, (cin, cout) in enumerate(zip(D_IN[res], D_OUT[res])):
        cin, cout, b = cin * ch or 3, cout * ch, f"blocks.{i}.0"
        _sn_layer(sd, f"{b}.conv1", (cout, cin, 3, 3), rng)
        _sn_layer(sd, f"{b}.conv2", (cout, cout, 3, 3), rng)
        if cin != cout or i < len(D_IN[res]) - 1:
            _sn_layer(sd, f"{b}.conv_sc", (cout, cin, 1, 1), rng)
        if i == 0:  # D's first block outputs side res / 2: attention at 64 is there for 128x128
            if res == 128:
                _attention(sd, "blocks.0.1", cout, rng)
    _sn_layer(sd, "linear", (1, 16 * ch), rng)
    _sn_layer(sd, "embed", (classes, 16 * ch), rng, bias=False)
    return sd


# ----------------------------------------------------------------------------------------------
# The independent reference: BigGAN-PyTorch's eval-mode formulas in float64 on the source tensors


def ref_sn(sd: dict, name: str) -> torch.Tensor:
    """layers.SN.W_() in eval mode: one power iteration from u0, not stored; W / (v W^T u'^T)."""
    w = sd[f"{name}.weight"].double()
    wm = w.reshape(w.shape[0], -1)
    v = sd[f"{name}.u0"].double() @ wm
    v = v / max(float(v.norm()), SN_EPS)
    u = v @ wm.t()
    u = u / max(float(u.norm()), SN_EPS)
    return w / float((v @ wm.t()) @ u.t())


def ref_conv(sd: dict, name: str, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    w = ref_sn(sd, name)
    b = sd[f"{name}.bias"].double() if bias else None
    return F.conv2d(x, w, b, padding=w.shape[-1] // 2)


def ref_linear(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    out = x @ ref_sn(sd, name).t()
    return out + sd[f"{name}.bias"].double() if f"{name}.bias" in sd else out


def ref_bn(sd: dict, name: str, x: torch.Tensor, eps: float = BN_EPS) -> torch.Tensor:
    mean, var = sd[f"{name}.stored_mean"].double(), sd[f"{name}.stored_var"].double()
    return (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + eps)


def ref_ccbn(sd: dict, name: str, x: torch.Tensor, c: torch.Tensor, eps: float = BN_EPS) -> torch.Tensor:
    """layers.ccbn: BN without affine, times 1 + gain(c), plus bias(c)."""
    gain = 1 + ref_linear(sd, f"{name}.gain", c)
    bias = ref_linear(sd, f"{name}.bias", c)
    return ref_bn(sd, name, x, eps) * gain[:, :, None, None] + bias[:, :, None, None]


def ref_attention(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    """layers.Attention: theta, phi, g 1x1 convs, phi/g 2x2 max-pooled, softmax over keys, o conv, gamma."""
    b, c, h, w = x.shape
    theta = ref_conv(sd, f"{name}.theta", x, bias=False).reshape(b, c // 8, h * w)
    phi = F.max_pool2d(ref_conv(sd, f"{name}.phi", x, bias=False), 2).reshape(b, c // 8, h * w // 4)
    g = F.max_pool2d(ref_conv(sd, f"{name}.g", x, bias=False), 2).reshape(b, c // 2, h * w // 4)
    beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (b, hw, hw/4)
    o = ref_conv(sd, f"{name}.o", (g @ beta.transpose(1, 2)).reshape(b, c // 2, h, w), bias=False)
    return x + sd[f"{name}.gamma"].double() * o


def up(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest, 2x


def ref_generator(sd: dict, z: torch.Tensor, y: torch.Tensor, hier: bool, bn_eps: float = BN_EPS) -> torch.Tensor:
    n = sum(k.endswith(".0.conv1.weight") for k in sd)
    z = z.double()
    e = sd["shared.weight"].double()[y]  # G.shared(y)
    if hier:
        zs = z.split(z.shape[1] // (n + 1), dim=1)
        z, conds = zs[0], [torch.cat([e, c], 1) for c in zs[1:]]
    else:
        conds = [e] * n
    h = ref_linear(sd, "linear", z).reshape(z.shape[0], -1, 4, 4)
    for i, c in enumerate(conds):
        b = f"blocks.{i}.0"

        x = h
        h = ref_conv(sd, f"{b}.conv1", up(F.relu(ref_ccbn(sd, f"{b}.bn1", x, c, bn_eps))))
        h = ref_conv(sd, f"{b}.conv2", F.relu(ref_ccbn(sd, f"{b}.bn2", h, c, bn_eps)))
        h = h + ref_conv(sd, f"{b}.conv_sc", up(x))
        if f"blocks.{i}.1.gamma" in sd:
            h = ref_attention(sd, f"blocks.{i}.1", h)
    gain, bias = sd["output_layer.0.gain"].double(), sd["output_layer.0.bias"].double()
    h = ref_bn(sd, "output_layer.0", h) * gain[:, None, None] + bias[:, None, None]
    return torch.tanh(ref_conv(sd, "output_layer.2", F.relu(h)))


def ref_discriminator(sd: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = x.double()
    n = sum(k.endswith(".0.conv1.weight") for k in sd)
    for i in range(n):
        b, inp = f"blocks.{i}.0", h
        t = ref_conv(sd, f"{b}.conv2", F.relu(ref_conv(sd, f"{b}.conv1", F.relu(h) if i > 0 else h)))
        down = i < n - 1
        t = F.avg_pool2d(t, 2) if down else t
        if i == 0:  # not preactivated: downsample, then conv_sc
            s = ref_conv(sd, f"{b}.conv_sc", F.avg_pool2d(inp, 2))
        else:
            s = ref_conv(sd, f"{b}.conv_sc", inp) if f"{b}.conv_sc.weight" in sd else inp
            s = F.avg_pool2d(s, 2) if down else s
        h = t + s
        if f"blocks.{i}.1.gamma" in sd:
            h = ref_attention(sd, f"blocks.{i}.1", h)
    h = F.relu(h).sum(dim=(2, 3))
    return ref_linear(sd, "linear", h)[:, 0] + (ref_sn(sd, "embed")[y] * h).sum(1)


# ----------------------------------------------------------------------------------------------
# Parity


CASES = {  # resolution, ch, classes, dim_z, shared_dim, hierarchical, cbn linear bias
    "64-hier": (64, 8, 5, 20, 6, True, False),
    "128-hier": (128, 4, 3, 18, 5, True, False),
    "64-flat-cbn-bias": (64, 8, 5, 7, 6, False, True),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_converted_generator_matches_the_float64_reference_in_eval_mode(case):
    res, ch, classes, dim_z, shared, hier, cbn_bias = CASES[case]
    sd = biggan_g_state(res, ch, classes, dim_z, shared, hier, cbn_bias)
    cfg = infer_generator_config(sd)
    assert (cfg.resolution, cfg.g_width, cfg.num_classes, cfg.z_dim) == (res, ch, classes, dim_z)
    assert (cfg.g_shared_dim, cfg.g_hierarchical_z, cfg.g_cbn_bias, cfg.g_attention) == (shared, hier, cbn_bias, [64])
    G, ignored = convert_generator(sd, cfg)
    assert ignored == sorted(k for k in sd if k.endswith(".sv0"))
    rng = torch.Generator().manual_seed(1)
    z, y = torch.randn(3, dim_z, generator=rng), torch.tensor([0, classes - 1, 1])
    expected = ref_generator(sd, z, y, hier)
    assert expected.std() > 0.05  # a non-trivial image, not tanh saturated or flat
    with torch.no_grad():
        got = G(z, y)
    assert (got.double() - expected).abs().max() < 1e-5


@pytest.mark.parametrize("res", [64, 128])
def test_converted_discriminator_matches_the_float64_reference(res):
    ch, classes = 8, 3
    sd = biggan_d_state(res, ch, classes)
    cfg = ModelConfig(resolution=res, num_classes=classes, d_width=ch, d_attention=[64] if res == 128 else [])
    D, ignored = convert_discriminator(sd, cfg)
    assert len(ignored) == sum(k.endswith(".sv0") for k in sd)
    x = torch.rand(2, 3, res, res, generator=torch.Generator().manual_seed(2)) * 2 - 1
    y = torch.tensor([2, 0])
    with torch.no_grad():
        got = D(x, y)
    expected = ref_discriminator(sd, x, y)
    assert ((got.double() - expected).abs() / expected.abs().clamp(min=1)).max() < 1e-5


# ----------------------------------------------------------------------------------------------
# The CLI and the tools that read its output


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """convert.py on a 64x64 G_ema.pth / D.pth pair written with torch.save, as BigGAN-PyTorch saves them."""
    root = tmp_path_factory.mktemp("biggan")
    g, d = biggan_g_state(64, 8, 5, 20, 6, True), biggan_d_state(64, 8, 5)
    torch.save(g, root / "G_ema.pth", _use_new_zipfile_serialization=False)  # the 2019 files' legacy format
    torch.save(d, root / "D.pth")
    out = root / "converted"
    assert convert_cli.main(["biggan-pytorch", str(root / "G_ema.pth"), "--out", str(out), "--discriminator",
                             str(root / "D.pth")]) == 0  # fmt: skip
    return root, out, g, d


@pytest.mark.slow  # the export's model card and sample.py each run G on 64 latents with attention at 64x64
def test_export_loads_and_samples_like_the_reference(converted, tmp_path):
    _, out, g, d = converted
    G, config = load_generator(out)
    assert (out / "README.md").is_file() and (out / "samples.png").is_file() and (out / "discriminator.safetensors")
    z, y = torch.randn(2, 20, generator=torch.Generator().manual_seed(3)), torch.tensor([4, 2])
    with torch.no_grad():
        assert (G(z, y).double() - ref_generator(g, z, y, hier=True)).abs().max() < 1e-5
    assert sample_cli.main(["--checkpoint", str(out), "--num", "2", "--grid", str(tmp_path / "g.png"),
                            "--attention-maps", str(tmp_path / "a.png"), "--device", "cpu"]) == 0  # fmt: skip
    assert (tmp_path / "g.png").stat().st_size > 0 and (tmp_path / "a.png").stat().st_size > 0
    models = load_models(out)  # the explorer: G, and D from discriminator.safetensors
    assert models.generator.model_config == config.model and models.discriminator is not None
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        logits = models.discriminator(x, y).double()
    expected = ref_discriminator(d, x, y)
    assert ((logits - expected).abs() / expected.abs().clamp(min=1)).max() < 1e-5


@pytest.mark.slow
def test_evaluate_reads_the_export(converted, tmp_path, capsys):
    out = converted[1]
    argv = ["--checkpoint", str(out), "--num", "8", "--metrics", "isc", "--feature-extractor", "fashion_classifier",
            "--allow-out-of-domain", "--device", "cpu", f"eval.cache_dir={tmp_path}"]  # fmt: skip
    assert evaluate_cli.main(argv) == 0
    assert '"num_samples": 8' in capsys.readouterr().out


def _fails_in_one_line(capsys, argv: list[str], words: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        convert_cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert words in err, err


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda sd: sd.pop("blocks.1.0.conv2.u0"), "lacks tensor blocks.1.0.conv2.u0"),
        (lambda sd: sd.__setitem__("blocks.2.0.conv1.bias", torch.zeros(5)), "blocks.2.0.conv1.bias has shape (5,)"),
        (lambda sd: sd.__setitem__("blocks.0.0.conv1.u1", torch.zeros(1, 128)), "blocks.0.0.conv1.u1"),
        (lambda sd: sd.pop("shared.weight"), "lacks tensor shared.weight"),
    ],
    ids=["missing", "wrong-shape", "unused", "no-shared-embedding"],
)
def test_bad_state_dicts_fail_in_one_line(tmp_path, capsys, edit, words):
    sd = biggan_g_state(64, 8, 5, 20, 6, True)
    edit(sd)
    torch.save(sd, tmp_path / "G.pth")
    _fails_in_one_line(capsys, ["biggan-pytorch", str(tmp_path / "G.pth"), "--out", str(tmp_path / "o")], words)
    assert not (tmp_path / "o").exists()


def test_pickled_input_is_refused_unread(tmp_path, capsys):
    torch.save({"weight": torch.zeros(2), "args": argparse.Namespace(G_ch=96)}, tmp_path / "state_dict.pth")
    _fails_in_one_line(capsys, ["biggan-pytorch", str(tmp_path / "state_dict.pth"), "--out", str(tmp_path / "o")],
                       "needs pickle beyond tensors")  # fmt: skip
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ConversionError) as info:
        read_state_dict(tmp_path / "junk.pth")
    assert "\n" not in str(info.value)


def test_override_that_contradicts_the_tensors_fails_in_one_line(tmp_path, capsys):
    torch.save(biggan_g_state(64, 8, 5, 20, 6, True), tmp_path / "G.pth")
    _fails_in_one_line(capsys, ["biggan-pytorch", str(tmp_path / "G.pth"), "--out", str(tmp_path / "o"),
                                "--width", "4"], "has shape")  # fmt: skip


def test_published_shapes_infer_configs_biggan128_and_its_parameter_counts():
    """The published 128x128 model's names and shapes (allocated on the meta device: shapes only) infer exactly
    configs/biggan128.yaml; the fixtures' shapes give BigGAN's reported 70.4M (G) and 88.0M (D) parameters."""
    with torch.device("meta"):
        g, d = biggan_g_state(128, 96, 1000, 120, 128, True), biggan_d_state(128, 96, 1000)
    model = load_config(ROOT / "configs" / "biggan128.yaml").model
    assert infer_generator_config(g) == model
    assert infer_discriminator_fields(d, 128) == dict(d_width=96, d_attention=[64], num_classes=1000)
    buffers = (".u0", ".sv0", ".stored_mean", ".stored_var")  # the rest are parameters, all mapped one to one
    counts = [sum(t.numel() for k, t in sd.items() if not k.endswith(buffers)) for sd in (g, d)]
    assert [round(n / 1e5) / 10 for n in counts] == [70.4, 88.0]


# ----------------------------------------------------------------------------------------------
# Provenance on the card, evaluation without labels, fine-tuning from the export


def test_card_says_where_the_weights_come_from(converted):
    root, out, _, _ = converted
    card = (out / "README.md").read_text()
    title = next(line for line in card.splitlines() if line.startswith("# "))
    assert title == (
        "# SAGAN generator: 64x64, class-conditional (5 classes), converted from BigGAN-PyTorch, "
        "trained on ImageNet by its authors"
    )
    assert "trained on folder" not in card and "this repository did not train them" in card
    for name in ("G_ema.pth", "D.pth"):  # each source file named with its SHA-256, hashed here independently
        assert f"| {name} | `{hashlib.sha256((root / name).read_bytes()).hexdigest()}` |" in card


@pytest.mark.slow  # G's 64-latent sample grid for the card, twice
def test_save_pretrained_keeps_the_source_on_the_card(converted, tmp_path):
    G = Generator.from_pretrained(str(converted[1]))
    G.save_pretrained(tmp_path / "again")
    assert "converted from BigGAN-PyTorch" in (tmp_path / "again" / "README.md").read_text()
    assert json.loads((tmp_path / "again" / "config.json").read_text())["source"] == G.source


def test_evaluate_scores_a_conditional_export_against_an_unlabelled_folder(converted, tmp_path, capsys):
    """FID of the 5-class export against an image folder (no labels) without model.num_classes=0; training
    on that folder keeps refusing the conditional model."""
    write_folder(tmp_path / "images")
    argv = ["--checkpoint", str(converted[1]), "--num", "8", "--metrics", "fid", "--feature-extractor",
            "fashion_classifier", "--allow-out-of-domain", "--device", "cpu", f"data.root={tmp_path / 'images'}",
            f"eval.cache_dir={tmp_path / 'cache'}", "eval.batch_size=8"]  # fmt: skip
    assert evaluate_cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "folder" and math.isfinite(result["frechet_classifier_distance"])
    assert result["frechet_classifier_distance"] > 0
    _, config = load_generator(converted[1])
    config.data.root = str(tmp_path / "images")
    with pytest.raises(DatasetError, match="model.num_classes=5 but dataset 'folder' has no classes"):
        build_dataset(config.data, config.model)


@pytest.fixture(scope="module")
def ten_class_export(tmp_path_factory):
    """A converted 64x64 pair with CIFAR-10's 10 classes (the built-in dataset's end-of-run coherence report
    would cost more than the run)."""
    root = tmp_path_factory.mktemp("biggan10")
    torch.save(biggan_g_state(64, 4, 10, 10, 6, True), root / "G.pth")
    torch.save(biggan_d_state(64, 4, 10), root / "D.pth")
    out = root / "converted"
    convert(root / "G.pth", out, discriminator_path=root / "D.pth", say=lambda _: None)
    return out


def test_init_from_loads_the_export_before_the_first_step(ten_class_export):
    """G, the EMA copy and D of a fresh run equal the export's tensors (read here with safetensors directly)."""
    from accelerate import Accelerator

    from gan.checkpoint import read_networks
    from gan.step import build_parts
    from gan.train_state import initialise

    config, networks, where = read_networks(ten_class_export)
    parts = build_parts(config, Accelerator(cpu=True))
    said: list[str] = []
    initialise(parts, networks, where, said.append)
    g_file = load_file(str(ten_class_export / "generator.safetensors"))
    d_file = load_file(str(ten_class_export / "discriminator.safetensors"))
    for module, expected in ((parts.G_raw, g_file), (parts.ema.module, g_file), (parts.D_raw, d_file)):
        got = module.state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert said == [f"--init-from: G, D from {ten_class_export}; optimisers fresh, starting at step 0"]
    assert parts.opt_g.state_dict()["state"] == {} and parts.opt_d.state_dict()["state"] == {}


@pytest.mark.slow  # two 64x64 training steps, the end-of-run grid, maps and export
def test_train_init_from_runs_and_refuses_another_architecture(ten_class_export, tmp_path, capsys, dataset_on_disk):
    run, tiny = tmp_path / "run", [*TINY_RUN, "train.batch_size=2", "train.sample_grid=4"]
    base = ["--config", "configs/demo.yaml", "--init-from", str(ten_class_export), *tiny, "train.steps=2",
            *dataset_on_disk("cifar10", tmp_path / "data")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:  # demo.yaml's 32x32 model: refused, with the overrides that fit
        train_cli.main([*base, "--run-dir", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "differs from its config in resolution" in err, err
    assert not (tmp_path / "refused").exists()
    fix = err.split("use its architecture: ")[1].split()
    assert train_cli.main([*base, "--run-dir", str(run), *fix]) == 0
    assert "--init-from: G, D from" in capsys.readouterr().out
    state, config, step = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert step == 2 and config.model == load_generator(ten_class_export)[1].model
    start = load_file(str(ten_class_export / "generator.safetensors"))
    moved = [float((state["G"][k] - start[k]).norm() / start[k].norm()) for k in start if k.endswith(".original")]
    assert 0 < max(moved) < 0.2  # two Adam steps from the export's weights, not from a fresh initialisation
    origin = json.loads((run / "init_from.json").read_text())  # the run says where its weights came from
    assert origin["source"] == str(ten_class_export) and origin["networks"] == ["G", "D"]
    for name in ("generator.safetensors", "discriminator.safetensors", "config.json"):
        assert origin["sha256"][name] == hashlib.sha256((ten_class_export / name).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Files of other tables, BigGAN-deep, TF-Hub conversions


@pytest.mark.parametrize("res", [256, 32])
def test_a_file_of_another_resolution_ends_in_the_converters_own_line(tmp_path, capsys, res):
    torch.save(biggan_g_state(res, 4, 5, 20, 6, False), tmp_path / "G.pth")
    blocks = len(G_IN[res])
    _fails_in_one_line(capsys, ["biggan-pytorch", str(tmp_path / "G.pth"), "--out", str(tmp_path / "o")],
                       f"the generator has {blocks} blocks, BigGAN's {res}x{res} table; this converter maps BigGAN's "
                       "64x64 (4 blocks) and 128x128 (5 blocks) tables only")  # fmt: skip


def _deep(sd: dict) -> dict:
    """BigGAN-deep's layout (BigGANdeep.py): bottleneck blocks with conv1 ... conv4 and bn1 ... bn4, no conv_sc."""
    rng = torch.Generator().manual_seed(5)
    out = {k: v for k, v in sd.items() if ".conv_sc." not in k}
    for key in [k for k in sd if k.endswith(".0.conv2.weight")]:
        block, c = key.removesuffix(".conv2.weight"), sd[key].shape[0]
        _sn_layer(out, f"{block}.conv3", (c, c, 3, 3), rng)
        _sn_layer(out, f"{block}.conv4", (c, c, 1, 1), rng)
        for bn in ("bn3", "bn4") if f"{block}.bn2.gain.weight" in sd else ():  # G's blocks; D's have no BN
            for part in ("gain", "bias"):
                out[f"{block}.{bn}.{part}.weight"] = sd[f"{block}.bn2.{part}.weight"].clone()
            _stats(out, f"{block}.{bn}", c, rng)
    return out


@pytest.mark.parametrize("network", ["generator", "discriminator"])
def test_a_biggan_deep_file_is_refused_naming_biggan_deep(tmp_path, capsys, network):
    torch.save(_deep(biggan_g_state(128, 4, 5, 20, 6, True)), tmp_path / "G.pth")
    torch.save(biggan_g_state(64, 8, 5, 20, 6, True), tmp_path / "G64.pth")
    torch.save(_deep(biggan_d_state(64, 8, 5)), tmp_path / "D.pth")
    argv = (["biggan-pytorch", str(tmp_path / "G.pth")] if network == "generator" else
            ["biggan-pytorch", str(tmp_path / "G64.pth"), "--discriminator", str(tmp_path / "D.pth")])  # fmt: skip
    _fails_in_one_line(capsys, [*argv, "--out", str(tmp_path / "o")],
                       f"the {network} is BigGAN-deep's (blocks with conv1 to conv4 bottlenecks); this converter maps "
                       "BigGAN-PyTorch's BigGAN (BigGAN.py) only, not BigGAN-deep")  # fmt: skip


@pytest.mark.slow  # the export's model card runs G on 64 latents at 64x64
def test_a_tf_hub_conversion_is_detected_and_converted_with_its_epsilons(tmp_path, capsys):
    """No sv0 buffers: TF-Hub's layout, whose batch-norm (and spectral-norm) epsilon is 1e-4. The converter says
    so in one line and uses them: G matches the float64 reference at BN eps 1e-4, which the published 1e-5
    would miss by far more than the tolerance."""
    sd = {k: v for k, v in biggan_g_state(64, 8, 5, 20, 6, True).items() if not k.endswith(".sv0")}
    sd = {k: (v * 0.01 + 1e-4 if k.endswith(".stored_var") else v) for k, v in sd.items()}  # small variances
    torch.save(sd, tmp_path / "G.pth")
    assert convert_cli.main(["biggan-pytorch", str(tmp_path / "G.pth"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"{tmp_path / 'G.pth'}: no sv0 buffers, the layout of a conversion from TF-Hub's BigGAN: converting with "
        "its batch-norm and spectral-norm epsilons of 1e-4 (--bn-eps / --sn-eps set them otherwise)"
    )
    G, config = load_generator(tmp_path / "o")
    assert config.model.g_bn_eps == 1e-4
    z, y = torch.randn(2, 20, generator=torch.Generator().manual_seed(3)), torch.tensor([4, 2])
    with torch.no_grad():
        got = G(z, y).double()
    assert (got - ref_generator(sd, z, y, hier=True, bn_eps=1e-4)).abs().max() < 1e-5
    assert (got - ref_generator(sd, z, y, hier=True, bn_eps=1e-5)).abs().max() > 1e-3


def test_given_epsilons_win_over_the_tf_hub_detection(tmp_path):
    sd = {k: v for k, v in biggan_g_state(64, 8, 5, 20, 6, True).items() if not k.endswith(".sv0")}
    said: list[str] = []
    overrides: dict = {"g_bn_eps": 2e-5}
    assert epsilons(sd, 3e-6, overrides, said.append) == 3e-6 and overrides["g_bn_eps"] == 2e-5 and said == []
    overrides = {"g_bn_eps": None}
    assert epsilons(biggan_g_state(64, 8, 5, 20, 6, True), None, overrides, said.append) == 1e-6
    assert overrides["g_bn_eps"] is None and said == []  # a BigGAN-PyTorch file: the published values
