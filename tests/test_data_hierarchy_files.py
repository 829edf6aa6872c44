"""The public hierarchy files: CUB's dash-indented Wikispecies tree and its class list."""

from pathlib import Path

import pytest
from conftest import nodes_per_level

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.data.hierarchy_files import (
    class_paths,
    parse_id_names,
    parse_indented_tree,
    parse_path_csv,
)

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


@pytest.mark.skipif(not (SHARED / "cub").is_dir(), reason=f"{SHARED} not present")
def test_real_cub_files_give_200_classes_under_13_orders():
    nodes = parse_indented_tree((SHARED / "cub/hierarchy_flat.txt").read_text(), "flat")
    names = parse_id_names((SHARED / "cub/classes_wikispecies.txt").read_text(), "classes")
    assert sorted(names) == list(range(1, 201))
    tree = ClassTree.from_paths(class_paths([names[i] for i in range(1, 201)], nodes, "flat"))
    assert tree.num_classes == 200 and tree.max_depth == 4
    assert len(set(tree.level_names(0))) == 13  # orders
    assert sorted(tree.depths.tolist()).count(3) == 4  # the four genus-named classes


# The format of ProxyDR's CIFAR100_cls.csv, written here (CRLF line ends, as the real file).
PATH_CSV = (
    "Class,Path,Number\r\n"
    "apple,Nature_non-animal/Plants/fruit_and_vegetables/apple,0\r\n"
    "bear,Animals/Mammals/large_carnivores/bear,3\r\n"
    "trout,Animals/Non-mammal_vertebrates/fish/trout,91\r\n"
)


def test_path_csv_gives_each_class_its_path():
    paths = parse_path_csv(PATH_CSV, "cls.csv")
    assert paths == {
        "apple": ("Nature_non-animal", "Plants", "fruit_and_vegetables", "apple"),
        "bear": ("Animals", "Mammals", "large_carnivores", "bear"),
        "trout": ("Animals", "Non-mammal_vertebrates", "fish", "trout"),
    }
    tree = ClassTree.from_paths(list(paths.values()))
    assert nodes_per_level(tree) == [2, 3, 3, 3]
    # a byte-order mark before the header is not part of it
    assert parse_path_csv("\ufeff" + PATH_CSV, "cls.csv") == paths


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Class;Path;Number\n", r"cls.csv, line 1: expected the header 'Class,Path,Number'"),
        ("Class,Path,Number\napple,a/apple\n", r"cls.csv, line 2: expected '<class>,<a/b/"),
        ("Class,Path,Number\napple,a/apple,x\n", r"cls.csv, line 2: expected '<class>,<a/b/"),
        ('Class,Path,Number\n"apple",a/apple,0\n', r"cls.csv, line 2: expected .* unquoted"),
        ("Class,Path,Number\napple,a//apple,0\n", r"cls.csv, line 2: empty class or node name"),
        ("Class,Path,Number\n\napple,a/pear,0\n", r"cls.csv, line 3: path 'a/pear' does not end"),
        ("Class,Path,Number\na,x/a,0\na,y/a,1\n", r"cls.csv, line 3: class 'a' appears twice"),
        ("Class,Path,Number\n", r"cls.csv: no classes below the header"),
    ],
)
def test_malformed_path_csv_is_refused_naming_the_line(text, message):
    with pytest.raises(HierpipeError, match=message):
        parse_path_csv(text, "cls.csv")


@pytest.mark.skipif(
    not (SHARED / "cifar100/CIFAR100_cls.csv").is_file(), reason=f"{SHARED} not present"
)
def test_real_cifar100_file_gives_3_7_20_100_nodes_per_level():
    paths = parse_path_csv((SHARED / "cifar100/CIFAR100_cls.csv").read_text(), "cls")
    assert len(paths) == 100
    tree = ClassTree.from_paths([paths[name] for name in sorted(paths)])
    assert nodes_per_level(tree) == [3, 7, 20, 100]
    assert set(tree.level_names(0)) == {"Animals", "Artificial", "Nature_non-animal"}
