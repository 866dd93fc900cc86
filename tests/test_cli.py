"""The README's demo command runs end to end (2 steps, 1 image, eager lowering for speed)."""
import pytest
import torch

from jano_compile.cli import main
from jano_compile.models import bundled_files


def test_demo_runs_end_to_end(tmp_path, capsys):
    if not all(p.is_file() for p in bundled_files()):
        pytest.skip("bundled weights not trained into the package")
    out = tmp_path / "demo.png"
    assert main(["demo", "--steps", "2", "--seeds", "1", "--lowering", "eager", "--out", str(out),
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "speedup" in text
    assert "no region analysis" in text and "compiling" not in text   # 2 steps, eager: said as it is
    from PIL import Image
    image = Image.open(out)
    assert image.size == (3 * 128 + 20, 128)


@pytest.mark.parametrize("args,says", [
    (["--steps", "0"], "at least 1"),
    (["--device", "foo"], "not a device torch knows"),
    (["--device", "meta"], "holds no values"),
    (["--device", "mps"] if not torch.backends.mps.is_available() else ["--device", "meta"], "use --device cpu"),
    (["--out", "/nonexistent-dir/x.png"], "does not exist"),
    (["--out", "/tmp"], "is a directory"),
    (["--out", "jano_demo"], "extension says the format"),
    (["--out", "/proc/jano_demo.png"], "cannot be written"),
])
def test_demo_rejects_bad_arguments_before_any_work(args, says, capsys):
    with pytest.raises(SystemExit):
        main(["demo", *args])
    err = capsys.readouterr().err
    assert says in err and "usage: jano-compile demo" in err     # the demo's usage, not the top level's

