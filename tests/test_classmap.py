"""Mapping dataset labels to head indices and readable class names."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sing_audit.classmap import LabelMapping, looks_like_synset, map_labels, normalize_name
from sing_audit.components import LinearHead
from sing_audit.errors import DataError

KEYS = ["n01440764", "n01443537", "n02099601", "n02123045"]
NAMES = ["tench", "goldfish", "golden retriever", "tabby cat"]


def _head(c: int = 4, names=NAMES, keys=KEYS) -> LinearHead:
    return LinearHead(weight=np.ones((c, 3)), bias=None, weight_eps=1e-7, class_names=names, class_keys=keys)


@pytest.fixture(scope="module")
def head() -> LinearHead:
    return _head()


@pytest.fixture(scope="module")
def imagenet_head() -> LinearHead:
    from sing_audit.imagenet import imagenet_class_info

    keys, names = imagenet_class_info(1000)
    return LinearHead(weight=np.zeros((1000, 2)), bias=None, weight_eps=1e-7, class_names=list(names), class_keys=list(keys))


# --------------------------------------------------------------------------- class_map


def test_class_map_first(head):
    m = map_labels(["fish", "dog", "fish"], head, class_map={"fish": 0, "dog": 2, "unused": 3})
    assert isinstance(m, LabelMapping)
    assert m.how == "class_map" and m.label_to_index == {"fish": 0, "dog": 2}
    assert m.class_names == NAMES  # the head's names win over dataset labels


def test_class_map_wins_over_synsets(head):
    m = map_labels(["n01440764"], head, class_map={"n01440764": 1})
    assert m.how == "class_map" and m.label_to_index == {"n01440764": 1}


@pytest.mark.parametrize("bad", [4, -1, 100])
def test_class_map_out_of_range(head, bad):
    with pytest.raises(DataError, match=r"out of range.*0–3"):
        map_labels(["a"], head, class_map={"a": bad})


def test_class_map_missing_label_has_close_match(head):
    with pytest.raises(DataError) as err:
        map_labels(["golden_retriever", "tench"], head, class_map={"golden_retreiver": 2, "tench": 0})
    msg = str(err.value)
    assert "'golden_retriever'" in msg and "golden_retreiver" in msg and "class_map" in msg


# --------------------------------------------------------------------------- synsets


def test_synsets(head):
    m = map_labels(["n02123045", "n01440764"], head)
    assert m.how == "synset" and m.label_to_index == {"n02123045": 3, "n01440764": 0}
    assert m.class_names == NAMES


def test_synsets_real_imagenet(imagenet_head):
    m = map_labels(["n01440764", "n01443537", "n02099601"], imagenet_head)
    assert m.how == "synset" and m.label_to_index == {"n01440764": 0, "n01443537": 1, "n02099601": 207}
    assert m.class_names[207] == "golden retriever" and len(m.class_names) == 1000


def test_unknown_synset_gets_close_keys(head):
    with pytest.raises(DataError) as err:
        map_labels(["n01440764", "n01440765"], head)
    msg = str(err.value)
    assert "'n01440765'" in msg and "n01440764" in msg and "class_map" in msg


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("label", ["Golden_Retriever", "golden retriever", "GOLDEN  retriever", "golden_retriever"])
def test_names_case_and_underscores(head, label):
    m = map_labels([label, "tench"], head)
    assert m.how == "name" and m.label_to_index == {label: 2, "tench": 0}


def test_names_real_imagenet(imagenet_head):
    m = map_labels(["tench", "Golden_Retriever", "tabby"], imagenet_head)
    assert m.label_to_index == {"tench": 0, "Golden_Retriever": 207, "tabby": 281}


def test_ambiguous_name(imagenet_head):
    with pytest.raises(DataError, match=r"'crane' \(head indices 134, 517\)"):
        map_labels(["crane"], imagenet_head)
    m = map_labels(["crane"], imagenet_head, class_map={"crane": 134})
    assert m.label_to_index == {"crane": 134}


def test_unmapped_names_list_close_matches(head):
    with pytest.raises(DataError) as err:
        map_labels(["tench", "goldfsh", "zebra"], head)
    msg = str(err.value)
    assert "2 dataset label(s)" in msg
    assert "'goldfsh' (close: 'goldfish')" in msg and "'zebra'" in msg
    assert "add class_map to the dataset" in msg


def test_head_without_names_or_keys():
    bare = _head(names=None, keys=None)
    with pytest.raises(DataError, match="no class names or keys"):
        map_labels(["a"], bare)
    m = map_labels(["a", "b"], bare, class_map={"a": 0, "b": 1})
    assert m.class_names == ["a", "b", "class 2", "class 3"]


def test_unlabeled_dataset(head):
    m = map_labels([None, None], head)
    assert m.label_to_index == {} and m.class_names == NAMES
    bare = _head(names=None, keys=None)
    assert map_labels([], bare).class_names == ["class 0", "class 1", "class 2", "class 3"]


# --------------------------------------------------------------------------- readable names


def test_readable_name_priority():
    head = _head(names=["tench", "goldfish", "golden retriever", "tabby cat"], keys=None)
    m = map_labels(
        ["fish", "dog_breed"], head, class_map={"fish": 0, "dog_breed": 2}, class_names={"fish": "tinca tinca"}
    )
    assert m.class_names == ["tinca tinca", "goldfish", "golden retriever", "tabby cat"]


def test_readable_name_from_label_and_fallback():
    head = _head(names=None, keys=None)
    m = map_labels(["sea_lion", "dog"], head, class_map={"sea_lion": 1, "dog": 3})
    assert m.class_names == ["class 0", "sea lion", "class 2", "dog"]


def test_class_names_keyed_by_synset(head):
    m = map_labels(["n01440764"], head, class_names={"n01443537": "gold fish"})
    assert m.class_names[1] == "gold fish" and m.class_names[0] == "tench"


def test_synset_names_are_refused():
    head = _head(names=None, keys=KEYS)
    with pytest.raises(DataError) as err:
        map_labels(["n01440764"], head, class_map={"n01440764": 0})
    assert "synset" in str(err.value) and "class_names" in str(err.value)
    # giving readable names for every class fixes it
    m = map_labels(["n01440764"], head, class_names=dict(zip(KEYS, NAMES)))
    assert m.class_names == NAMES
    head_with_synset_names = _head(names=KEYS, keys=None)
    with pytest.raises(DataError, match="raw synset ids"):
        map_labels([], head_with_synset_names)


def test_helpers():
    assert normalize_name("  Golden_Retriever ") == "golden retriever"
    assert looks_like_synset("n01440764") and not looks_like_synset("n0144076") and not looks_like_synset("tench")


# --------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_name_matching_property(data):
    """Any subset of head names, in any case and with spaces as underscores, maps to its own index."""
    idx = data.draw(st.lists(st.integers(0, len(NAMES) - 1), min_size=1, max_size=4, unique=True))
    labels = []
    for i in idx:
        name = NAMES[i]
        if data.draw(st.booleans()):
            name = name.upper()
        if data.draw(st.booleans()):
            name = name.replace(" ", "_")
        labels.append(name)
    m = map_labels(labels, _head(keys=None))
    assert m.how == "name"
    assert [m.label_to_index[label] for label in labels] == idx
    assert m.class_names == NAMES


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(range(4))))
def test_class_map_property(perm):
    labels = ["a", "b", "c", "d"]
    m = map_labels(labels, _head(names=None, keys=None), class_map=dict(zip(labels, perm)))
    assert [m.label_to_index[x] for x in labels] == list(perm)
    assert sorted(m.class_names) == labels


def test_imagenet_synonyms_map(imagenet_head):
    m = map_labels(["tabby cat", "Tinca_tinca", "great white shark", "man-eater"], imagenet_head)
    assert m.label_to_index == {"tabby cat": 281, "Tinca_tinca": 0, "great white shark": 2, "man-eater": 2}
    assert m.class_names[281] == "tabby"  # the readable name stays the first synonym


def test_imagenet_synonyms_by_keys_only():
    from sing_audit.imagenet import imagenet_class_info

    keys, _ = imagenet_class_info(1000)
    head = LinearHead(weight=np.zeros((1000, 2)), bias=None, weight_eps=1e-7,
                      class_names=[f"c{i}" for i in range(1000)], class_keys=list(keys))
    assert map_labels(["tabby cat"], head).label_to_index == {"tabby cat": 281}


def test_a_readable_name_wins_over_another_class_synonym(imagenet_head):
    from sing_audit.imagenet import imagenet_synonyms

    names = imagenet_synonyms()
    # every label that is some class's readable name maps to that class, whatever synonyms say
    firsts = [n[0] for n in names]
    unique = [n for n in firsts if firsts.count(n) == 1][:50]
    m = map_labels(unique, imagenet_head)
    assert all(m.label_to_index[n] == firsts.index(n) for n in unique)


def test_synonyms_only_for_imagenet_heads(head):
    with pytest.raises(DataError, match="'tabby'"):  # a 4-class head knows its own names only
        map_labels(["tabby"], _head(names=["tench", "goldfish", "golden retriever", "tabby cat"]))


def test_ambiguous_synonym(imagenet_head):
    from sing_audit.imagenet import imagenet_synonyms

    seen: dict[str, list[int]] = {}
    for i, listed in enumerate(imagenet_synonyms()):
        for n in listed[1:]:
            seen.setdefault(n, []).append(i)
    firsts = {listed[0] for listed in imagenet_synonyms()}
    shared = next(n for n, idx in seen.items() if len(set(idx)) > 1 and n not in firsts)
    with pytest.raises(DataError, match="more than one head class"):
        map_labels([shared], imagenet_head)


def test_keys_among_names_map_by_key(imagenet_head):
    m = map_labels(["n01440764", "tabby cat"], imagenet_head)
    assert m.label_to_index == {"n01440764": 0, "tabby cat": 281}
    with pytest.raises(DataError, match=r"1 dataset label\(s\) do not match the head's class names: 'my_widget'"):
        map_labels(["n01440764", "tabby cat", "my_widget"], imagenet_head)
