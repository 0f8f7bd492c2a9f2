"""The streaming YFCC side-file join against the full index, on generated main and side files."""

import itertools
import random
import subprocess
import sys
from pathlib import Path

import pytest

from exiflang.pipeline.sources.base import SourceError
from exiflang.pipeline.sources.open import open_source
from exiflang.pipeline.sources.yfcc import FIELDS_2014, FIELDS_2016
from exiflang.pipeline.sources.yfcc_exif import YfccExifIndex, YfccSideJoin

REPO = Path(__file__).resolve().parents[2]


def _main_line(fields: tuple, pid: str, video: bool) -> str:
    f = dict.fromkeys(FIELDS_2016, "")
    f.update(
        line_number="1",
        photo_id=pid,
        server_id="2",
        farm_id="1",
        secret="abc",
        download_url=f"http://farm1.staticflickr.com/2/{pid}_abc.jpg",
        original_secret="def",
        original_extension="jpg",
        marker="1" if video else "0",
    )
    return "\t".join(f[n] for n in fields)


def write_files(
    folder: Path, seed: int, n: int = 300, layout: int = 25, order: str = "aligned", complete: bool = False
) -> tuple[Path, Path]:
    """A main file of ``n`` lines (some videos, some repeated ids) and its side file.

    ``complete``: as YFCC publishes it, one line per main line (videos included) in the main
    file's order, empty when the photo had no EXIF.  Otherwise it also lacks ~10% of the
    ids, holds ids the main file lacks and a second line for a few ids, and its lines are
    in the main file's order ("aligned") or shuffled."""
    rng = random.Random(seed)
    ids = [str(rng.randrange(10**9, 10**10)) for _ in range(n)]
    ids += rng.sample(ids, 5)  # the same photo twice in the source
    fields = FIELDS_2016 if layout == 25 else FIELDS_2014
    main = folder / f"yfcc100m_dataset_{layout}_{order}"
    main.write_text("".join(_main_line(fields, pid, rng.random() < 0.05) + "\n" for pid in ids))
    side: list[str] = []
    for pid in dict.fromkeys(ids):
        exif = f"Exif+IFD0.Make:Make{rng.randrange(9)},Exif+IFD0.Model:M{pid}"
        if complete:
            side.append(f"{pid}\t{exif if rng.random() < 0.8 else ''}")
            continue
        if rng.random() < 0.9:
            side.append(f"{pid}\t{exif}")
        if rng.random() < 0.05:  # an id the source never asks for
            side.append(f"{rng.randrange(10**10, 10**11)}\tExif+IFD0.Make:Other")
        if rng.random() < 0.03:  # a later line of the same id loses
            side.append(f"{pid}\tExif+IFD0.Make:Second")
    if not complete:
        side.insert(len(side) // 2, "malformed line without a tab")
    if order == "shuffled":
        rng.shuffle(side)
    path = folder / f"yfcc100m_exif_{layout}_{order}"
    path.write_text("\n".join(side) + "\n")
    return main, path


def _check_against_full(tmp_path: Path, main: Path, side: Path, **kw) -> YfccSideJoin:
    full = YfccExifIndex.build(str(side), str(tmp_path / "full.sqlite"))
    join = YfccSideJoin(str(side), str(tmp_path / "join.sqlite"), **kw)
    expected = list(open_source(main).rows())
    passed = []
    for row in join.rows(open_source(main).rows()):
        passed.append(row)
        # Readable by a reader that opens the database now, before the join goes on.
        if row.photo_id and len(passed) % 17 == 1:
            with YfccExifIndex.open(join.db_path) as now:
                assert now.get(row.photo_id) == full.get(row.photo_id)
    assert passed == expected  # rows pass through unchanged
    ids = [r.photo_id for r in expected if r.photo_id]
    with YfccExifIndex.open(join.db_path) as index:
        assert index.get_many(ids) == full.get_many(ids)
        assert all(index.get(p) == full.get(p) for p in ids)
    return join


@pytest.mark.parametrize("layout", [25, 23])
@pytest.mark.parametrize("order", ["complete", "aligned", "shuffled"])
def test_join_equals_full_index(tmp_path, layout, order):
    main, side = write_files(
        tmp_path,
        seed=layout,
        layout=layout,
        order="aligned" if order == "complete" else order,
        complete=order == "complete",
    )
    join = _check_against_full(tmp_path, main, side, block_rows=7, window=5)
    # Ids the side file lacks are found missing (reading it to its end); none when complete.
    assert (join.counts["missing"] > 0) == (order != "complete")
    if order == "complete":
        assert join.counts["spilled"] <= 20  # videos' lines only
    if order == "shuffled":
        assert join.counts["spilled"] > 0


def test_aligned_prefix_indexes_about_the_job_only(tmp_path):
    """A job cut short (as by --max-rows) in a side file of the source's order: the database
    holds the rows that passed (plus at most a block and the window), not the whole file."""
    main, side = write_files(tmp_path, seed=5, n=2000, complete=True)
    join = YfccSideJoin(str(side), str(tmp_path / "join.sqlite"), block_rows=50, window=100)
    taken = list(itertools.islice(join.rows(open_source(main).rows()), 200))
    ids = {r.photo_id for r in taken if r.photo_id}
    join.close()
    with YfccExifIndex.open(join.db_path) as index:
        full = YfccExifIndex.build(str(side), str(tmp_path / "full.sqlite"))
        assert {p: index.get(p) for p in ids} == {p: full.get(p) for p in ids}
        assert len(index) <= len(ids) + 50 + 100 < len(full) / 4
        assert index.info["filter"] == "stream"  # never mistaken for a full index


def test_file_read_to_its_end_is_a_full_index_a_rerun_reuses(tmp_path):
    main, side = write_files(tmp_path, seed=8, order="shuffled")
    join = _check_against_full(tmp_path, main, side, block_rows=50, window=10)
    db = Path(join.db_path)
    with YfccExifIndex.open(str(db)) as index:
        assert index.info["filter"] == "all"  # the missing ids made it read it all
        assert len(index) == len(YfccExifIndex.open(str(tmp_path / "full.sqlite")))
    stamp = db.stat().st_mtime_ns
    again = YfccSideJoin(str(side), str(db))
    assert len(list(again.rows(open_source(main).rows()))) > 0
    assert db.stat().st_mtime_ns == stamp and again.counts["lines"] == 0
    # Reused by build() as well, which accepts any full index of the same file.
    assert YfccExifIndex.build(str(side), str(db)).info["filter"] == "all"


def test_stale_stream_index_is_rebuilt_and_bad_side_file_is_one_line(tmp_path):
    main, side = write_files(tmp_path, seed=9, n=60)
    db = tmp_path / "join.sqlite"
    first = YfccSideJoin(str(side), str(db), block_rows=5)
    next(iter(first.rows(open_source(main).rows())))  # killed after one block
    first.close()
    _check_against_full(tmp_path, main, side, block_rows=5)
    assert sorted(p.name for p in tmp_path.iterdir() if "sqlite" in p.name) == ["full.sqlite", "join.sqlite"]
    with pytest.raises(SourceError, match="no such YFCC EXIF side file"):
        YfccSideJoin(str(tmp_path / "nope"), str(db))


def test_reader_in_another_process_while_the_join_writes(tmp_path):
    """A worker process reading the database over and over while the join commits its blocks
    (3 rows each): no read fails (locked or malformed), and in the end it finds every id."""
    main, side = write_files(tmp_path, seed=13, n=1500, complete=True)
    db = tmp_path / "join.sqlite"
    join = YfccSideJoin(str(side), str(db), block_rows=3, window=4)
    rows = join.rows(open_source(main).rows())
    first = next(rows)  # the database exists from here on
    code = (
        "import sys, time; from exiflang.pipeline.sources.yfcc_exif import YfccExifIndex as I\n"
        "ids = sys.argv[2].split(','); reads = 0; end = time.time() + 30\n"
        "while time.time() < end:\n"
        "    with I.open(sys.argv[1]) as ix: got = ix.get_many(ids)\n"
        "    reads += 1\n"
        "    if reads == 1: print('ready', flush=True)\n"
        "    if len(got) == len(ids): break\n"
        "print(reads, len(got))\n"
    )
    rows_ids = [r.photo_id for r in open_source(main).rows()]
    ids = list(dict.fromkeys(rows_ids))
    reader = subprocess.Popen(
        [sys.executable, "-c", code, str(db), ",".join(ids)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline() == "ready\n"  # reading before the join goes on
    passed = [first, *rows]
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    reads, found = map(int, out.split())
    assert found == len(ids) and reads >= 1
    assert len(passed) == len(rows_ids)
