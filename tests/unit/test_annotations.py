"""Reference annotations: readers on tiny hand-made sources, propagation, the snapshot."""

from __future__ import annotations

import gzip
import json
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cellrep_ml.annotations import (
    PROPAGATED,
    Reference,
    ancestors,
    build_reference,
    fetch_sources,
    load_reference,
    make_snapshot,
    propagate,
    read_complexes,
    read_gaf,
    read_gene_pairs,
    read_go_sqlite,
    read_obo,
    read_orgdb_annotations,
    read_orgdb_kegg,
    snapshot_dir,
    term_closure,
    write_snapshot,
)
from cellrep_ml.annotations.schema import SCHEMAS
from cellrep_ml.cli import main
from cellrep_ml.errors import ReferenceDataError

# --------------------------------------------------------------------------- fixtures

OBO = """\
format-version: 1.2
ontology: go

[Term]
id: GO:0000001
name: cellular_component
namespace: cellular_component

[Term]
id: GO:0000002
name: organelle
namespace: cellular_component
is_a: GO:0000001 ! cellular_component

[Term]
id: GO:0000003
name: organelle membrane
namespace: cellular_component
is_a: GO:0000001 ! cellular_component {source="x"}
relationship: part_of GO:0000002 ! organelle

[Term]
id: GO:0000010
name: biological_process
namespace: biological_process

[Term]
id: GO:0000011
name: regulation of transport
namespace: biological_process
is_a: GO:0000010 ! biological_process
relationship: regulates GO:0000010 ! biological_process

[Term]
id: GO:0000099
name: obsolete thing
namespace: cellular_component
is_obsolete: true
is_a: GO:0000002

[Typedef]
id: part_of
name: part of
is_transitive: true
"""

_GAF_ROWS = [
    # DB, DB_Object_ID, Symbol, Qualifier, GO ID, Ref, Evidence, With, Aspect, name, syn, type, taxon, date, by
    ["UniProtKB", "P1", "GENEA", "located_in", "GO:0000003", "PMID:1", "IDA", "", "C"],
    ["UniProtKB", "P1", "GENEA", "located_in", "GO:0000003", "PMID:2", "IDA", "", "C"],
    ["UniProtKB", "P1", "GENEA", "involved_in", "GO:0000011", "PMID:1", "IMP", "", "P"],
    ["UniProtKB", "P2", "GENEB", "NOT|located_in", "GO:0000002", "PMID:1", "IDA", "", "C"],
    ["UniProtKB", "P2", "GENEB", "NOT", "GO:0000003", "PMID:1", "IDA", "", "C"],
    ["UniProtKB", "P2", "GENEB", "enables", "GO:0000020", "GO_REF:1", "IEA", "", "F"],
]


def _gaf_text(rows=_GAF_ROWS) -> str:
    tail = ["protein name", "SYN", "protein", "taxon:9606", "20220101", "UniProt", "", ""]
    lines = ["!gaf-version: 2.2", "!generated-by: test"]
    lines += ["\t".join(r + tail) for r in rows]
    return "\n".join(lines) + "\n"


def _go_sqlite(path: Path) -> Path:
    """A GO.sqlite with the GO.db table layout and a 6-term DAG."""
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE metadata (name VARCHAR(80) PRIMARY KEY, value VARCHAR(255));
        INSERT INTO metadata VALUES ('GOSOURCEDATE', '2022-07-01');
        CREATE TABLE go_term (_id INTEGER PRIMARY KEY, go_id CHAR(10) NOT NULL UNIQUE,
            term VARCHAR(255) NOT NULL, ontology VARCHAR(9) NOT NULL, definition TEXT NULL);
        INSERT INTO go_term VALUES
            (1, 'all', 'all', 'universal', NULL),
            (2, 'GO:0005575', 'cellular_component', 'CC', NULL),
            (3, 'GO:0005737', 'cytoplasm', 'CC', NULL),
            (4, 'GO:0005783', 'endoplasmic reticulum', 'CC', NULL),
            (5, 'GO:0008150', 'biological_process', 'BP', NULL),
            (6, 'GO:0006810', 'transport', 'BP', NULL),
            (7, 'GO:0003674', 'molecular_function', 'MF', NULL),
            (8, 'GO:0051049', 'regulation of transport', 'BP', NULL);
        CREATE TABLE go_cc_parents (_id INTEGER NOT NULL, _parent_id INTEGER NOT NULL,
            relationship_type VARCHAR(7) NOT NULL);
        INSERT INTO go_cc_parents VALUES (3, 2, 'isa'), (4, 3, 'part of');
        CREATE TABLE go_bp_parents (_id INTEGER NOT NULL, _parent_id INTEGER NOT NULL,
            relationship_type VARCHAR(7) NOT NULL);
        INSERT INTO go_bp_parents VALUES (6, 5, 'isa'), (8, 5, 'isa'), (8, 6, 'regulates');
        CREATE TABLE go_mf_parents (_id INTEGER NOT NULL, _parent_id INTEGER NOT NULL,
            relationship_type VARCHAR(7) NOT NULL);
        """
    )
    con.commit()
    con.close()
    return path


def _orgdb_sqlite(path: Path) -> Path:
    """An org.Hs.eg.sqlite with the org.Hs.eg.db table layout: 3 genes."""
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE metadata (name VARCHAR(80) PRIMARY KEY, value VARCHAR(255));
        INSERT INTO metadata VALUES ('EGSOURCEDATE', '2022-Sep12');
        CREATE TABLE genes (_id INTEGER PRIMARY KEY, gene_id VARCHAR(10) NOT NULL UNIQUE);
        INSERT INTO genes VALUES (1, '10952'), (2, '60'), (3, '999');
        CREATE TABLE gene_info (_id INTEGER NOT NULL UNIQUE, gene_name VARCHAR(255) NOT NULL,
            symbol VARCHAR(80) NOT NULL);
        INSERT INTO gene_info VALUES (1, 'Sec61 translocon subunit beta', 'SEC61B'),
            (2, 'actin beta', 'ACTB'), (3, 'no annotation', 'NOANN');
        CREATE TABLE go_cc (_id INTEGER NOT NULL, go_id CHAR(10) NOT NULL, evidence CHAR(3) NOT NULL);
        INSERT INTO go_cc VALUES (1, 'GO:0005783', 'IDA'), (1, 'GO:0005783', 'TAS'),
            (2, 'GO:0005737', 'IDA');
        CREATE TABLE go_bp (_id INTEGER NOT NULL, go_id CHAR(10) NOT NULL, evidence CHAR(3) NOT NULL);
        INSERT INTO go_bp VALUES (1, 'GO:0006810', 'IEA'), (2, 'GO:0051049', 'IMP');
        CREATE TABLE go_mf (_id INTEGER NOT NULL, go_id CHAR(10) NOT NULL, evidence CHAR(3) NOT NULL);
        INSERT INTO go_mf VALUES (2, 'GO:0003674', 'ND');
        CREATE TABLE kegg (_id INTEGER NOT NULL, path_id CHAR(5) NOT NULL);
        INSERT INTO kegg VALUES (1, '04141'), (2, '04810'), (2, '04520');
        """
    )
    con.commit()
    con.close()
    return path


_PREFIX = "efaar_benchmarking/benchmark_annotations/"


def _wheel(path: Path, corum: str | None = None) -> Path:
    """A wheel-shaped zip with the efaar-benchmarking annotation files."""
    members = {
        _PREFIX + "CORUM.txt": corum or "entity1,entity2\nSEC61B,ACTB\nACTB,SEC61B\nACTB,ACTB\n",
        _PREFIX + "HuMAP.txt": "entity1,entity2\nSEC61B,ACTB\nNOANN,ACTB\n",
        _PREFIX + "Reactome.txt": "entity1,entity2\nZZZ,AAA\n",
        _PREFIX + "CORUM_clusters.tsv": (
            "Sec61 complex\tSEC61B ACTB SEC61B\nActin complex\tACTB NOANN\n"
        ),
        "efaar_benchmarking-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: x\nVersion: 1.0\n",
    }
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    return {
        "go_sqlite": _go_sqlite(tmp_path / "GO.sqlite"),
        "orgdb_sqlite": _orgdb_sqlite(tmp_path / "org.Hs.eg.sqlite"),
        "efaar_wheel": _wheel(tmp_path / "efaar_benchmarking-1.0-py3-none-any.whl"),
    }


# ----------------------------------------------------------------------------- OBO/GAF


@pytest.mark.parametrize("compressed", [False, True])
def test_read_obo_terms_and_edges(tmp_path, compressed):
    path = tmp_path / ("go.obo.gz" if compressed else "go.obo")
    data = OBO.encode()
    path.write_bytes(gzip.compress(data) if compressed else data)
    terms, edges = read_obo(path)
    assert terms.sort("go_id")["go_id"].to_list() == [
        "GO:0000001", "GO:0000002", "GO:0000003", "GO:0000010", "GO:0000011", "GO:0000099",
    ]
    row = terms.filter(pl.col("go_id") == "GO:0000003").row(0, named=True)
    assert row == {"go_id": "GO:0000003", "name": "organelle membrane", "namespace": "CC",
                   "is_obsolete": False}
    assert terms.filter(pl.col("is_obsolete"))["go_id"].to_list() == ["GO:0000099"]
    assert terms.filter(pl.col("go_id") == "GO:0000011")["namespace"].item() == "BP"
    # regulates and edges of obsolete terms are dropped; comments/qualifiers are stripped
    assert sorted(edges.iter_rows()) == [
        ("GO:0000002", "GO:0000001", "is_a"),
        ("GO:0000003", "GO:0000001", "is_a"),
        ("GO:0000003", "GO:0000002", "part_of"),
        ("GO:0000011", "GO:0000010", "is_a"),
    ]


def test_read_obo_rejects_term_without_namespace(tmp_path):
    path = tmp_path / "bad.obo"
    path.write_text("[Term]\nid: GO:1\nname: x\n")
    with pytest.raises(ReferenceDataError, match=r"bad\.obo.*namespace"):
        read_obo(path)


@pytest.mark.parametrize("compressed", [True, False])
def test_read_gaf_skips_comments_and_not(tmp_path, compressed):
    path = tmp_path / ("goa.gaf.gz" if compressed else "goa.gaf")
    data = _gaf_text().encode()
    path.write_bytes(gzip.compress(data) if compressed else data)
    ann = read_gaf(path)
    assert ann.schema == SCHEMAS["gene_annotations"]
    assert sorted(ann.iter_rows()) == [
        ("GENEA", "GO:0000003", "CC", "IDA"),  # two references, one row
        ("GENEA", "GO:0000011", "BP", "IMP"),
        ("GENEB", "GO:0000020", "MF", "IEA"),
    ]


def test_read_gaf_reports_bad_aspect_with_line(tmp_path):
    path = tmp_path / "bad.gaf"
    path.write_text(_gaf_text([["UniProtKB", "P1", "GENEA", "", "GO:1", "R", "IDA", "", "X"]]))
    with pytest.raises(ReferenceDataError, match=r"bad\.gaf, line 3: aspect"):
        read_gaf(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ReferenceDataError, match="nope.gaf"):
        read_gaf(tmp_path / "nope.gaf")


# ---------------------------------------------------------------------------- SQLite


def test_read_go_sqlite(tmp_path):
    terms, edges = read_go_sqlite(_go_sqlite(tmp_path / "GO.sqlite"))
    assert "all" not in terms["go_id"].to_list()
    assert terms.height == 7
    assert terms.filter(pl.col("go_id") == "GO:0005783").row(0) == (
        "GO:0005783", "endoplasmic reticulum", "CC",
    )
    assert sorted(edges.iter_rows()) == [
        ("GO:0005737", "GO:0005575", "is_a"),
        ("GO:0005783", "GO:0005737", "part_of"),
        ("GO:0006810", "GO:0008150", "is_a"),
        ("GO:0051049", "GO:0008150", "is_a"),  # the 'regulates' edge is not kept
    ]


def test_read_orgdb(tmp_path):
    path = _orgdb_sqlite(tmp_path / "org.Hs.eg.sqlite")
    ann = read_orgdb_annotations(path)
    assert sorted(ann.iter_rows()) == [
        ("ACTB", "GO:0003674", "MF", "ND"),
        ("ACTB", "GO:0005737", "CC", "IDA"),
        ("ACTB", "GO:0051049", "BP", "IMP"),
        ("SEC61B", "GO:0005783", "CC", "IDA"),
        ("SEC61B", "GO:0005783", "CC", "TAS"),
        ("SEC61B", "GO:0006810", "BP", "IEA"),
    ]
    assert sorted(read_orgdb_kegg(path).iter_rows()) == [
        ("ACTB", "04520"), ("ACTB", "04810"), ("SEC61B", "04141"),
    ]


def test_sqlite_without_bioconductor_tables_is_rejected(tmp_path):
    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ReferenceDataError, match=r"other\.sqlite: missing tables.*go_term"):
        read_go_sqlite(path)


# ----------------------------------------------------------------------------- wheel


def test_read_gene_pairs_dedups_unordered(tmp_path):
    pairs = read_gene_pairs(_wheel(tmp_path / "e.whl"))
    assert sorted(pairs.iter_rows()) == [
        ("CORUM", "ACTB", "SEC61B"),  # both orders, one row; the self-pair is gone
        ("HuMAP", "ACTB", "NOANN"),
        ("HuMAP", "ACTB", "SEC61B"),
        ("Reactome", "AAA", "ZZZ"),
    ]


def test_read_gene_pairs_bad_header(tmp_path):
    wheel = _wheel(tmp_path / "e.whl", corum="a,b\nX,Y\n")
    with pytest.raises(ReferenceDataError, match=r"CORUM\.txt: expected header"):
        read_gene_pairs(wheel)


def test_read_complexes(tmp_path):
    cx = read_complexes(_wheel(tmp_path / "e.whl"))
    assert cx.rows() == [
        ("CORUM", 1, "Sec61 complex", "SEC61B"),
        ("CORUM", 1, "Sec61 complex", "ACTB"),
        ("CORUM", 2, "Actin complex", "ACTB"),
        ("CORUM", 2, "Actin complex", "NOANN"),
    ]


def test_wheel_that_is_not_a_zip(tmp_path):
    path = tmp_path / "broken.whl"
    path.write_text("not a zip")
    with pytest.raises(ReferenceDataError, match=r"broken\.whl: not a zip"):
        read_complexes(path)


# ----------------------------------------------------------------------- propagation

#        R
#      /   \(part_of)
#     A     E
#  is_a \  (part_of)
#   B    C
#    \  /        D is_a B, D is_a C
#     D
DAG = pl.DataFrame(
    [
        ("A", "R", "is_a"),
        ("E", "R", "part_of"),
        ("B", "A", "is_a"),
        ("C", "A", "part_of"),
        ("D", "B", "is_a"),
        ("D", "C", "is_a"),
    ],
    schema=SCHEMAS["go_edges"],
    orient="row",
)


def test_ancestors_follow_requested_relations():
    assert ancestors("D", DAG) == {"A", "B", "C", "R"}
    # D still reaches A and R through B when part_of is ignored; C and E reach nothing
    assert ancestors("D", DAG, relations=("is_a",)) == {"A", "B", "C", "R"}
    assert ancestors("C", DAG) == {"A", "R"}
    assert ancestors("C", DAG, relations=("is_a",)) == set()
    assert ancestors("E", DAG, relations=("is_a",)) == set()
    assert ancestors("E", DAG) == {"R"}
    assert ancestors("R", DAG) == set()
    assert ancestors("GO:unknown", DAG) == set()


def test_term_closure_distances():
    closure = term_closure(DAG)
    dist = {(d, a): k for d, a, k in closure.iter_rows()}
    assert dist[("D", "D")] == 0
    assert dist[("D", "A")] == 2  # shortest of the two paths
    assert dist[("D", "R")] == 3
    assert dist[("E", "R")] == 1
    assert len(dist) == closure.height  # no duplicate pairs
    assert {d for d, a in dist if d == a} == {"A", "B", "C", "D", "E", "R"}
    isa = {(d, a): k for d, a, k in term_closure(DAG, relations=("is_a",)).iter_rows()}
    assert ("C", "A") not in isa and ("E", "R") not in isa
    assert isa[("D", "A")] == 2 and isa[("B", "R")] == 2


def test_propagate_adds_ancestors_once():
    ann = pl.DataFrame(
        [("g1", "D", "CC", "IDA"), ("g1", "A", "CC", "TAS"), ("g2", "E", "CC", "IEA")],
        schema=SCHEMAS["gene_annotations"],
        orient="row",
    )
    out = propagate(ann, DAG)
    assert out.columns == ann.columns
    rows = set(out.iter_rows())
    assert rows == {
        ("g1", "D", "CC", "IDA"),
        ("g1", "A", "CC", "TAS"),  # direct annotation keeps its evidence
        ("g1", "B", "CC", PROPAGATED),
        ("g1", "C", "CC", PROPAGATED),
        ("g1", "R", "CC", PROPAGATED),
        ("g2", "E", "CC", "IEA"),
        ("g2", "R", "CC", PROPAGATED),
    }
    assert out.height == len(rows)
    only_isa = propagate(ann, DAG, relations=("is_a",))
    assert set(only_isa.filter(pl.col("gene") == "g2")["go_id"]) == {"E"}
    assert set(only_isa.filter(pl.col("gene") == "g1")["go_id"]) == {"A", "B", "C", "D", "R"}


def test_cycle_and_unknown_relation_are_rejected():
    cyclic = pl.concat([DAG, pl.DataFrame([("R", "D", "is_a")], schema=SCHEMAS["go_edges"], orient="row")])
    with pytest.raises(ReferenceDataError, match="cycle"):
        term_closure(cyclic)
    with pytest.raises(ValueError, match="relations"):
        ancestors("D", DAG, relations=("regulates",))


def test_closure_of_a_long_chain_does_not_recurse():
    n = 1500  # deeper than Python's default recursion limit (1000)
    chain = pl.DataFrame(
        {"child": [f"T{i}" for i in range(1, n)], "parent": [f"T{i - 1}" for i in range(1, n)],
         "relation": ["is_a"] * (n - 1)}
    )
    assert len(ancestors(f"T{n - 1}", chain)) == n - 1


# ------------------------------------------------------------------- build & reference


def test_build_reference_from_tiny_sources(tmp_path, sources):
    out = tmp_path / "ref"
    built = build_reference(out, **sources)
    ref = Reference.read(out)
    assert ref.counts() == built.counts()
    assert ref.cc_terms("SEC61B") == {"GO:0005783", "GO:0005737", "GO:0005575"}
    assert ref.cc_terms("SEC61B", propagated=False) == {"GO:0005783"}
    assert ref.cc_terms("NOANN") == set()
    assert ref.genes_with_cc() == ["ACTB", "SEC61B"]
    assert ref.term_name("GO:0005783") == "endoplasmic reticulum"
    with pytest.raises(KeyError, match="GO:9999999"):
        ref.term_name("GO:9999999")
    assert sorted(ref.kegg["pathway_id"]) == ["04141", "04520", "04810"]
    assert ref.complexes["complex_id"].unique().sort().to_list() == [1, 2]
    prov = json.loads((out / "reference.json").read_text())
    assert prov["sources"]["efaar"]["version"] == "1.0"
    assert prov["sources"]["go"]["GOSOURCEDATE"] == "2022-07-01"
    assert prov["counts"]["gene_annotations"] == 6
    assert "built_at" in prov


def test_build_with_obo_and_gaf_replaces_go_sources(tmp_path, sources):
    obo, gaf = tmp_path / "go.obo", tmp_path / "goa.gaf.gz"
    obo.write_text(OBO)
    gaf.write_bytes(gzip.compress(_gaf_text().encode()))
    ref = build_reference(
        tmp_path / "ref", orgdb_sqlite=sources["orgdb_sqlite"], efaar_wheel=sources["efaar_wheel"],
        go_obo=obo, gaf=gaf,
    )
    assert "GO:0000099" not in ref.go_terms["go_id"].to_list()  # obsolete
    assert ref.cc_terms("GENEA") == {"GO:0000003", "GO:0000002", "GO:0000001"}
    # GENEB's MF term is not in the ontology file: dropped and counted
    assert ref.provenance["annotations_dropped_unknown_term"] == 1
    assert ref.provenance["sources"]["annotations"]["format"] == "gaf"


def test_build_without_go_source_fails(sources):
    with pytest.raises(ReferenceDataError, match="no GO source"):
        build_reference("unused", orgdb_sqlite=sources["orgdb_sqlite"], efaar_wheel=sources["efaar_wheel"])


def test_read_incomplete_reference(tmp_path, sources):
    with pytest.raises(ReferenceDataError, match="reference.json"):
        Reference.read(tmp_path / "empty")
    build_reference(tmp_path / "ref", **sources)
    (tmp_path / "ref" / "kegg.parquet").unlink()
    with pytest.raises(ReferenceDataError, match=r"kegg\.parquet: table file missing"):
        Reference.read(tmp_path / "ref")


def test_load_reference_prefers_built_reference(tmp_path, monkeypatch, sources):
    monkeypatch.setenv("CELLREP_HOME", str(tmp_path / "home"))
    assert load_reference().provenance["kind"] == "snapshot"
    build_reference(tmp_path / "home" / "reference", **sources)
    ref = load_reference()
    assert ref.provenance["kind"] == "full"
    assert ref.genes_with_cc() == ["ACTB", "SEC61B"]


def test_make_snapshot_subsets_and_trims(tmp_path, sources):
    full = build_reference(tmp_path / "full", **sources)
    snap = make_snapshot(full, markers=("ACTB", "NOT_A_GENE"))
    # universe: CORUM genes with CC (SEC61B, ACTB) + present markers; NOANN has no CC
    assert set(snap.gene_annotations["gene"]) == {"ACTB", "SEC61B"}
    assert set(snap.gene_annotations["namespace"]) == {"CC", "BP"}  # MF left out
    assert "NOANN" not in set(snap.complexes["gene"])
    assert snap.gene_pairs.filter(pl.col("source") == "HuMAP").rows() == [("HuMAP", "ACTB", "SEC61B")]
    assert snap.provenance["markers_missing"] == ["NOT_A_GENE"]
    assert "GO:0003674" not in set(snap.go_terms["go_id"])  # only MF, not needed
    # the closure is kept, so propagation inside the snapshot matches the full reference
    for gene in ("ACTB", "SEC61B"):
        assert snap.cc_terms(gene) == full.cc_terms(gene)
    trimmed = make_snapshot(full, rule="bp_no_iea")
    assert ("SEC61B", "GO:0006810") not in set(trimmed.gene_annotations.select("gene", "go_id").iter_rows())
    with pytest.raises(ValueError, match="too small|budget"):
        write_snapshot(full, tmp_path / "snap", max_bytes=100)


def test_cli_build_and_snapshot(tmp_path, sources):
    runner = CliRunner()
    out = runner.invoke(main, [
        "reference", "build", "--out", str(tmp_path / "ref"),
        "--go-sqlite", str(sources["go_sqlite"]), "--orgdb-sqlite", str(sources["orgdb_sqlite"]),
        "--efaar-wheel", str(sources["efaar_wheel"]),
    ])
    assert out.exit_code == 0, out.output
    assert "gene_annotations" in out.output
    out = runner.invoke(main, ["reference", "snapshot", "--from", str(tmp_path / "ref"),
                               "--out", str(tmp_path / "snap")])
    assert out.exit_code == 0, out.output
    assert Reference.read(tmp_path / "snap").provenance["trim_rule"] == "none"
    out = runner.invoke(main, ["reference", "snapshot", "--from", str(tmp_path / "nothing"),
                               "--out", str(tmp_path / "snap2")])
    assert out.exit_code != 0
    assert "reference.json" in out.output


# ------------------------------------------------------------------------------ fetch


class _FakeRunner:
    """Stands in for subprocess.run: records commands and creates what they would."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, cmd, cwd, check):
        self.calls.append(cmd)
        if self.fail:
            raise subprocess.CalledProcessError(100, cmd)
        cwd = Path(cwd)
        if cmd[:2] == ["apt-get", "download"]:
            for pkg in cmd[2:]:
                (cwd / f"{pkg}_3.16.0-1_all.deb").write_text(pkg)
        elif cmd[0] == "dpkg":
            pkg = "GO.db/extdata/GO.sqlite" if "go.db" in cmd[2] else "org.Hs.eg.db/extdata/org.Hs.eg.sqlite"
            target = Path(cmd[3]) / "usr/lib/R/site-library" / pkg
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("db")
        elif cmd[1:4] == ["-m", "pip", "download"]:
            (Path(cmd[cmd.index("--dest") + 1]) / "efaar_benchmarking-1.0-py2.py3-none-any.whl").write_text("w")


def test_fetch_sources_runs_each_step_once(tmp_path):
    run = _FakeRunner()
    src = fetch_sources(tmp_path / "cache", run=run)
    assert src.go_sqlite.name == "GO.sqlite" and src.go_sqlite.is_file()
    assert src.orgdb_sqlite.name == "org.Hs.eg.sqlite"
    assert src.efaar_wheel.name.startswith("efaar_benchmarking-1.0")
    assert run.calls[0] == ["apt-get", "download", "r-bioc-go.db", "r-bioc-org.hs.eg.db"]
    assert [c[:2] for c in run.calls[1:3]] == [["dpkg", "-x"], ["dpkg", "-x"]]
    pip = run.calls[3]
    assert pip[1:5] == ["-m", "pip", "download", "--no-deps"] and pip[-1] == "efaar-benchmarking==1.0"
    again = _FakeRunner()
    assert fetch_sources(tmp_path / "cache", run=again) == src
    assert again.calls == []  # everything cached


def test_fetch_sources_reports_failed_command(tmp_path):
    with pytest.raises(ReferenceDataError, match="apt-get download.*exit code 100"):
        fetch_sources(tmp_path / "cache", run=_FakeRunner(fail=True))


# --------------------------------------------------------------------------- snapshot


def test_committed_snapshot():
    path = snapshot_dir()
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    assert size <= 3_000_000
    ref = load_reference(path)
    cc = ref.cc_terms("SEC61B")
    assert "GO:0005783" in cc and "GO:0005737" in cc
    assert ref.term_name("GO:0005783") == "endoplasmic reticulum"
    assert ref.term_name("GO:0005737") == "cytoplasm"
    assert ref.cc_terms("SEC61B", propagated=False) < cc
    assert "GO:0005634" in ref.cc_terms("LMNB1")  # nucleus
    corum = ref.complexes.filter(pl.col("source") == "CORUM")
    assert corum["complex_id"].n_unique() > 1000
    assert set(ref.gene_pairs["source"]) == {"CORUM", "HuMAP", "Reactome"}
    genes = set(ref.genes_with_cc())
    assert {"SEC61B", "LMNB1", "TOMM20", "GOLGA2", "LAMP1"} <= genes
    # every annotated term and every ancestor has a name (the closure is complete)
    reached = set(ref.propagated()["go_id"])
    assert reached <= set(ref.go_terms["go_id"])
    assert ref.provenance["kind"] == "snapshot"
    assert ref.provenance["sources"]["go"]["package"] == "GO.db"
