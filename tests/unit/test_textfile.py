import os

from hostside import textfile


def test_gauges_in_exposition_format_with_labels():
    text = textfile.render([("a_seconds", "When.", 1764108000.25), ("b", "Count.", 3, {"unit": "x.service"}),
                            ("b", "Count.", 0, {"unit": "y.service"})])
    assert text == ("# HELP a_seconds When.\n# TYPE a_seconds gauge\na_seconds 1764108000.25\n"
                    "# HELP b Count.\n# TYPE b gauge\n"
                    'b{unit="x.service"} 3\nb{unit="y.service"} 0\n')


def test_files_are_replaced_whole_and_world_readable(tmp_path):
    old_umask = os.umask(0o077)
    try:
        textfile.write("audit_partitions", [("a", "A.", 1)], directory=tmp_path)
    finally:
        os.umask(old_umask)
    assert (tmp_path / "audit_partitions.prom").stat().st_mode & 0o777 == 0o644
    textfile.write("audit_partitions", [("a", "A.", 2), ("b", "B.", 3)], directory=tmp_path)
    samples = [line for line in (tmp_path / "audit_partitions.prom").read_text().splitlines() if line[0] != "#"]
    assert samples == ["a 2", "b 3"]
    assert [p.name for p in tmp_path.iterdir()] == ["audit_partitions.prom"]


def test_an_unwritable_directory_is_reported_not_raised(tmp_path, capsys):
    textfile.write("x", [("a", "A.", 1)], directory=tmp_path / "missing")
    assert "could not write" in capsys.readouterr().err


def test_a_link_planted_in_the_directory_is_replaced_not_written_through(tmp_path):
    """The audit's scenario: the metrics directory is postgres's, root writes there; a link planted at the file, or at
    the name a temporary file used to have, must not make root write to (or chmod) what the link points at."""
    canary = tmp_path / "canary"
    canary.write_text("root's\n")
    canary.chmod(0o600)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for name in ("retention.prom.tmp", "retention.prom"):
        (metrics / name).symlink_to(canary)
    textfile.write("retention", [("a", "A.", 1)], directory=metrics)
    assert canary.read_text() == "root's\n" and canary.stat().st_mode & 0o777 == 0o600
    written = metrics / "retention.prom"
    assert not written.is_symlink() and written.read_text().endswith("a 1\n")
