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
