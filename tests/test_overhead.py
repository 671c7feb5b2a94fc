"""``benchmarks/overhead.py`` on tiny random pipelines of every family: it runs and prints the ratio table."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"
FAST = ["--steps", "2", "--repeats", "1", "--no-memory", "--seeds", "0", "--output-type", "latent"]


@pytest.fixture(scope="module")
def overhead():
    spec = importlib.util.spec_from_file_location("overhead_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3", "pixart", "flux"])
def test_family_runs_and_prints_the_ratio_table(overhead, family, capsys, tmp_path):
    out = tmp_path / "table.md"
    size = ["--height", "32"] if family == "flux" else []  # the tiny Flux's default 128 px: a 64x64 token grid
    assert overhead.main(["--family", family, *FAST, *size, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    md = out.read_text()
    assert md in printed and f"--family {family}" in md
    assert "× vanilla (cpu)" in md and "AI-T2I / vanilla = **" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| variant")]
    labels = [r.split(" | ")[0][2:] for r in rows]
    expected = ["vanilla pipeline", 'ait2i method="attend-and-excite"', 'ait2i method="ait2i"']
    if family == "sd15":  # diffusers' A&E pipeline exists for SD 1.x only
        expected.insert(1, "diffusers StableDiffusionAttendAndExcitePipeline")
        assert "× diffusers A&E (cpu)" in md and "our A&E / diffusers' A&E = **" in md
    else:
        assert "diffusers A&E" not in md
    assert labels == expected
    vanilla_ratio = rows[0].split(" | ")[3]
    assert vanilla_ratio == "1.00"
    for r in rows:
        assert float(r.split(" | ")[3]) > 0


def test_diffusers_ae_is_sd15_only(overhead):
    with pytest.raises(SystemExit):
        overhead.parse_args(["--family", "sdxl", "--variants", "vanilla", "diffusers-ae"])
    assert "diffusers-ae" in overhead.parse_args([]).variants  # sd15 default: all four, as before
    assert overhead.parse_args(["--family", "pixart"]).variants == ["vanilla", "ours-ae", "ours-ait2i"]
    assert overhead.parse_args(["--family", "sdxl"]).scheduler == "euler"
    assert overhead.parse_args(["--family", "sd3"]).scheduler == "default"
    for family in ("sd3", "flux"):
        assert overhead.parse_args(["--family", family]).scheduler == "default"
        with pytest.raises(SystemExit):
            overhead.parse_args(["--family", family, "--scheduler", "ddim"])


def test_methods_are_timed_as_extra_variants(overhead, capsys, tmp_path):
    out = tmp_path / "table.md"
    args = ["--variants", "vanilla", "--methods", "ait2i-paper", *FAST, "--out", str(out)]
    assert overhead.main(args) == 0
    md = out.read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| variant")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["vanilla pipeline", 'ait2i method="ait2i-paper"']
    assert 'ait2i method="ait2i-paper" / vanilla = **' in md


def test_methods_refuses_unknown_and_box_methods(overhead, capsys):
    for name, why in (("nosuch", "unknown method 'nosuch'"), ("ait2i-layout", "reads per-subject boxes")):
        with pytest.raises(SystemExit):
            overhead.parse_args(["--methods", name])
        assert why in capsys.readouterr().err
