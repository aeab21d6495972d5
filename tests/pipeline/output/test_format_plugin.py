"""Adding an output format is one module: a job, `verify` and `report` run through a format
the test suite defines, named in the job as ``module:Class``."""

import zipfile

import pytest

from pipeline.output.formats import FORMATS, get_format, register
from pipeline.output.formats.files import FilesShardWriter
from pipeline.output.storage import OutputFolder
from pipeline.output.verify import verify_output
from pipeline.report.collect import collect
from pipeline.runner import run_job
from pipeline.spec import SpecError, build_spec
from tests.conftest import write_prompts

ZIP = "tests.pipeline.output.zip_format:ZipShardWriter"


def test_a_format_from_outside_runs_a_job_verify_and_report(ray_local, tmp_path):
    src = write_prompts(tmp_path / "p.parquet", [f"prompt {i}" for i in range(5)])
    out = tmp_path / "out"
    spec = build_spec({"input": {"path": src}, "output": {"path": str(out), "format": ZIP},
                       "model": {"family": "null"}, "generation": {"width": 16, "height": 16},
                       "runtime": {"actors": 1, "shard_size": 3}})
    assert run_job(spec, show_progress=False)["successes"] == 5
    with zipfile.ZipFile(out / "00000.zip") as z:
        assert z.namelist() == ["000000000.png", "000000001.png", "000000002.png"]
    folder = OutputFolder(str(out))
    assert verify_output(folder).ok, verify_output(folder).format()
    assert [s.key for s in collect(folder).samples] == [f"0000{i}000{j}" for i, j in
                                                        ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1))]
    with zipfile.ZipFile(out / "00001.zip", "a") as z:  # damage: a member the rows lack
        z.writestr("000010001.png", b"not the image")
    assert "000010001 is missing or differs" in verify_output(folder).format()


def test_register_and_refusals():
    assert get_format("files") is FilesShardWriter
    with pytest.raises(ValueError, match="is not a ShardWriter"):
        register(dict)
    with pytest.raises(SpecError, match="Input should be 'files', 'webdataset' or 'parquet'"):
        build_spec({"input": {"path": "x"}, "output": {"format": "tarball"}})
    with pytest.raises(SpecError, match="cannot be imported"):
        build_spec({"input": {"path": "x"}, "output": {"format": "nowhere:Writer"}})
    assert "zip" not in FORMATS or FORMATS["zip"].format == "zip"
