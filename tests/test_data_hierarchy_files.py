"""The public hierarchy files: CUB's dash-indented Wikispecies tree and its class list."""

from pathlib import Path

import pytest

from hierpipe.data.hierarchy_files import class_paths, parse_id_names, parse_indented_tree
from hierpipe.errors import HierpipeError
from hierpipe.hierarchy import ClassTree

SHARED = Path(__file__).resolve().parents[2] / "shared" / "hierarchies"

# The format of cvjena/semantic-embeddings' CUB-Hierarchy/hierarchy_flat.txt, written here:
# the root, then orders, families, genera and species, two dashes per level, blank lines
# between orders; one class (Geococcyx) is named by its genus.
TREE = """Aves

-- Procellariiformes
---- Diomedeidae
------ Phoebastria
-------- Phoebastria nigripes
-------- Phoebastria immutabilis

-- Cuculiformes
---- Cuculidae
------ Coccyzus
-------- Coccyzus minor
------ Geococcyx
"""
CLASSES = """1 Phoebastria nigripes
2 Phoebastria immutabilis
3 Coccyzus minor
4 Geococcyx
"""


def test_cub_format_gives_order_family_genus_species_paths():
    nodes = parse_indented_tree(TREE, "tree")
    names = parse_id_names(CLASSES, "classes")
    assert names == {
        1: "Phoebastria nigripes",
        2: "Phoebastria immutabilis",
        3: "Coccyzus minor",
        4: "Geococcyx",
    }
    paths = class_paths([names[i] for i in sorted(names)], nodes, "tree")
    assert paths == [
        ("Procellariiformes", "Diomedeidae", "Phoebastria", "Phoebastria nigripes"),
        ("Procellariiformes", "Diomedeidae", "Phoebastria", "Phoebastria immutabilis"),
        ("Cuculiformes", "Cuculidae", "Coccyzus", "Coccyzus minor"),
        ("Cuculiformes", "Cuculidae", "Geococcyx"),
    ]
    tree = ClassTree.from_paths(paths)
    assert tree.max_depth == 4
    # the genus-named class meets its family's species at the family
    assert tree.distance_matrix()[2, 3] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- Aves\n", r"tree, line 1: expected the root name without dashes first"),
        ("Aves\n--- Odd\n", r"tree, line 2: expected '<2k dashes> <name>'"),
        ("Aves\n---- TooDeep\n", r"tree, line 2: 'TooDeep' is at depth 2 below a node at depth 0"),
        ("Aves\n-- A\n-- A\n", r"tree, line 3: node 'A' appears twice"),
        ("Aves\n", r"tree: no nodes below the root"),
    ],
)
def test_malformed_tree_is_refused_naming_the_line(text, message):
    with pytest.raises(HierpipeError, match=message):
        parse_indented_tree(text, "tree")


def test_class_list_errors_name_the_line():
    with pytest.raises(HierpipeError, match=r"classes, line 2: expected '<id> <name>'"):
        parse_id_names("1 Aethia pusilla\nAethia cristatella\n", "classes")
    with pytest.raises(HierpipeError, match=r"classes, line 2: id 1 appears twice"):
        parse_id_names("1 A b\n1 C d\n", "classes")


def test_leaves_that_do_not_match_the_classes_are_refused():
    nodes = parse_indented_tree(TREE, "tree")
    with pytest.raises(
        HierpipeError, match=r"tree: 1 class\(es\) are not nodes .*'Aethia pusilla'"
    ):
        class_paths(["Coccyzus minor", "Aethia pusilla"], nodes, "tree")


@pytest.mark.skipif(not (SHARED / "cub").is_dir(), reason="../shared/hierarchies not present")
def test_real_cub_files_give_200_classes_under_13_orders():
    nodes = parse_indented_tree((SHARED / "cub/hierarchy_flat.txt").read_text(), "flat")
    names = parse_id_names((SHARED / "cub/classes_wikispecies.txt").read_text(), "classes")
    assert sorted(names) == list(range(1, 201))
    tree = ClassTree.from_paths(class_paths([names[i] for i in range(1, 201)], nodes, "flat"))
    assert tree.num_classes == 200 and tree.max_depth == 4
    assert len(set(tree.level_names(0))) == 13  # orders
    assert sorted(tree.depths.tolist()).count(3) == 4  # the four genus-named classes
