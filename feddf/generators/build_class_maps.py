"""Build feddf/generators/class_maps.json: which ImageNet-1k classes stand for each CIFAR-10 / CIFAR-100 class.

    python -m feddf.generators.build_class_maps        # rewrites the shipped JSON (needs torchvision)

The ImageNet class names are the ones torchvision ships (`ResNet50_Weights.IMAGENET1K_V1.meta["categories"]`, index =
ImageNet class id, the id BigGAN is conditioned on). The rules below name ImageNet classes by those exact names (or id
ranges for the big groups: birds, dogs, snakes); the build checks every name exists. CIFAR classes with no sensible
ImageNet counterpart (people, trees, flowers, landscapes, ...) get no members: a cache made with that map then has zero
images of them, and its coverage counts say so. Deer: ImageNet-1k has no deer; the nearest classes (antelopes:
hartebeest, impala, gazelle) stand in. The table is documented in docs/generators.md.
"""
from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("class_maps.json")

# ids as inclusive ranges (a, b) where a whole block of ImageNet is one kind
_BIRDS = [(7, 24), (80, 100), (127, 146)]
_DOGS = [(151, 268)]

CIFAR10 = {
    "airplane": ["airliner", "warplane"],
    "automobile": ["sports car", "convertible", "cab", "beach wagon", "limousine", "jeep", "minivan", "racer",
                   "Model T"],
    "bird": _BIRDS,
    "cat": ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"],
    "deer": ["hartebeest", "impala", "gazelle"],
    "dog": _DOGS,
    "frog": ["bullfrog", "tree frog", "tailed frog"],
    "horse": ["sorrel"],
    "ship": ["container ship", "liner", "fireboat", "aircraft carrier", "schooner", "pirate", "speedboat", "lifeboat",
             "catamaran", "trimaran", "yawl"],
    "truck": ["fire engine", "garbage truck", "pickup", "tow truck", "trailer truck", "moving van"],
}

CIFAR100 = {
    "apple": ["Granny Smith"], "aquarium_fish": ["goldfish", "rock beauty", "anemone fish", "lionfish"], "baby": [],
    "bear": ["brown bear", "American black bear", "ice bear", "sloth bear"], "beaver": ["beaver"],
    "bed": ["four-poster", "crib"], "bee": ["bee"],
    "beetle": ["tiger beetle", "ladybug", "ground beetle", "long-horned beetle", "leaf beetle", "dung beetle",
               "rhinoceros beetle", "weevil"],
    "bicycle": ["mountain bike", "bicycle-built-for-two"],
    "bottle": ["beer bottle", "wine bottle", "water bottle", "pop bottle", "pill bottle"],
    "bowl": ["mixing bowl", "soup bowl"], "boy": [],
    "bridge": ["steel arch bridge", "suspension bridge", "viaduct"],
    "bus": ["school bus", "trolleybus", "minibus"],
    "butterfly": ["admiral", "ringlet", "monarch", "cabbage butterfly", "sulphur butterfly", "lycaenid"],
    "camel": ["Arabian camel"], "can": ["milk can"], "castle": ["castle"], "caterpillar": [],
    "cattle": ["ox", "water buffalo", "bison"],
    "chair": ["barber chair", "folding chair", "rocking chair", "throne"], "chimpanzee": ["chimpanzee"],
    "clock": ["analog clock", "digital clock", "wall clock"], "cloud": [], "cockroach": ["cockroach"],
    "couch": ["studio couch"],
    "crab": ["Dungeness crab", "rock crab", "fiddler crab", "king crab", "hermit crab"],
    "crocodile": ["African crocodile", "American alligator"], "cup": ["cup", "coffee mug"],
    "dinosaur": ["triceratops"], "dolphin": [],
    "elephant": ["Indian elephant", "African elephant", "tusker"], "flatfish": [], "forest": [],
    "fox": ["red fox", "kit fox", "Arctic fox", "grey fox"], "girl": [], "hamster": ["hamster"], "house": [],
    "kangaroo": ["wallaby"], "keyboard": ["computer keyboard", "typewriter keyboard"], "lamp": ["table lamp"],
    "lawn_mower": ["lawn mower"], "leopard": ["leopard", "snow leopard"], "lion": ["lion"],
    "lizard": ["banded gecko", "common iguana", "American chameleon", "whiptail", "agama", "frilled lizard",
               "alligator lizard", "Gila monster", "green lizard", "African chameleon", "Komodo dragon"],
    "lobster": ["American lobster", "spiny lobster", "crayfish"], "man": [], "maple_tree": [],
    "motorcycle": ["moped", "motor scooter"], "mountain": ["alp", "volcano"], "mouse": [],
    "mushroom": ["mushroom", "agaric", "bolete", "gyromitra", "stinkhorn", "earthstar", "hen-of-the-woods",
                 "coral fungus"],
    "oak_tree": [], "orange": ["orange"], "orchid": ["yellow lady's slipper"], "otter": ["otter"], "palm_tree": [],
    "pear": [], "pickup_truck": ["pickup"], "pine_tree": [], "plain": [], "plate": ["plate"], "poppy": [],
    "porcupine": ["porcupine"], "possum": [], "rabbit": ["wood rabbit", "hare", "Angora"], "raccoon": [],
    "ray": ["electric ray", "stingray"], "road": [], "rocket": ["missile", "projectile"], "rose": [],
    "sea": ["seashore"], "seal": ["sea lion"], "shark": ["great white shark", "tiger shark", "hammerhead"],
    "shrew": [], "skunk": ["skunk"], "skyscraper": [], "snail": ["snail"], "snake": [(52, 68)],
    "spider": ["black and gold garden spider", "barn spider", "garden spider", "black widow", "tarantula",
               "wolf spider"],
    "squirrel": ["fox squirrel"], "streetcar": ["streetcar"], "sunflower": [], "sweet_pepper": ["bell pepper"],
    "table": ["dining table"], "tank": ["tank"],
    "telephone": ["dial telephone", "pay-phone", "cellular telephone"], "television": ["television"],
    "tiger": ["tiger"], "tractor": ["tractor"],
    "train": ["passenger car", "freight car", "electric locomotive", "steam locomotive", "bullet train"],
    "trout": [], "tulip": [],
    "turtle": ["loggerhead", "leatherback turtle", "mud turtle", "terrapin", "box turtle"],
    "wardrobe": ["wardrobe"], "whale": ["grey whale", "killer whale"], "willow_tree": [],
    "wolf": ["timber wolf", "white wolf", "red wolf"], "woman": [], "worm": ["flatworm", "nematode"],
}


def _resolve(rules: dict, names: list[str]) -> dict[str, list[int]]:
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise SystemExit("torchvision ImageNet names are not unique; rules by name would be ambiguous")
    out, seen = {}, {}
    for target, items in rules.items():
        ids: list[int] = []
        for it in items:
            if isinstance(it, tuple):
                ids += list(range(it[0], it[1] + 1))
            elif it in index:
                ids.append(index[it])
            else:
                raise SystemExit(f"{target}: no ImageNet class named {it!r}")
        for i in ids:
            if i in seen:
                raise SystemExit(f"ImageNet {i} ({names[i]}) is in both {seen[i]} and {target}")
            seen[i] = target
        out[target] = sorted(ids)
    return out


def build() -> dict:
    from torchvision.models import ResNet50_Weights

    names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    if sorted(CIFAR100) != list(CIFAR100):
        raise SystemExit("CIFAR-100 targets must be in the dataset's (alphabetical) label order")
    maps = {}
    for key, rules in (("cifar10", CIFAR10), ("cifar100", CIFAR100)):
        members = _resolve(rules, names)
        maps[key] = {"targets": list(rules), "members": members,
                     "unmapped": [t for t, ids in members.items() if not ids]}
    return {"about": "ImageNet-1k class ids (BigGAN conditioning) per target class; built by "
                     "python -m feddf.generators.build_class_maps from torchvision's ImageNet category names",
            "imagenet_categories": names, "maps": maps}


if __name__ == "__main__":
    table = build()
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    for k, m in table["maps"].items():
        n = sum(len(v) for v in m["members"].values())
        print(f"{k}: {len(m['targets'])} targets, {n} ImageNet classes, unmapped: {', '.join(m['unmapped']) or '-'}")
    print(f"wrote {OUT}")
