"""Random scenes of the world, deterministic from a seed: the training distribution of the world model
and its encoders (subject instances and held-out class/context pairs excluded)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dreamlr.world.captions import caption
from dreamlr.world.instances import HELDOUT_PAIRS, is_reserved
from dreamlr.world.scene import Instance, Scene
from dreamlr.world.vocab import ACCESSORIES, CLASSES, COLOURS, CONTEXTS, LIVE_CLASSES, PATTERNS, SIZES

P_PLAIN = 0.3  # share of plain objects
P_ACCESSORY = 0.35  # share of live objects wearing something
FINISH_P = {"matte": 0.7, "shiny": 0.15, "wet": 0.15}


def sample_instance(rng: np.random.Generator, cls: str | None = None) -> Instance:
    """A random instance that is no subject's (class, colour, pattern)."""
    while True:
        name = cls or str(rng.choice(list(CLASSES)))
        colour = str(rng.choice(list(COLOURS)))
        patterned = [p for p in PATTERNS if p != "plain"]
        pattern = "plain" if rng.random() < P_PLAIN else str(rng.choice(patterned))
        ink = str(rng.choice([c for c in COLOURS if c != colour]))
        instance = Instance(name, colour, pattern, ink)
        if not is_reserved(instance):
            return instance


def sample_scene(rng: np.random.Generator, instance: Instance | None = None, context: str | None = None,
                 heldout: bool = False, dressed: bool = True) -> Scene:
    """A random scene: of `instance` (else a random non-subject one), in `context` (else a random one that
    is not a held-out pair for its class, unless `heldout`), in a random pose; live classes may wear an
    accessory and objects may be shiny or wet when `dressed`."""
    instance = instance or sample_instance(rng)
    if context is None:
        choices = [c for c in CONTEXTS if heldout or (instance.cls, c) not in HELDOUT_PAIRS]
        context = str(rng.choice(choices))
    accessory = None
    if dressed and instance.cls in LIVE_CLASSES and rng.random() < P_ACCESSORY:
        accessory = str(rng.choice(list(ACCESSORIES)))
    finish = str(rng.choice(list(FINISH_P), p=list(FINISH_P.values()))) if dressed else "matte"
    return Scene(
        instance=instance,
        context=context,
        size=str(rng.choice(list(SIZES))),
        x=float(rng.uniform(-1, 1)),
        y=float(rng.uniform(-1, 1)),
        angle=float(np.clip(rng.normal(0, 10), -25, 25)),
        mirror=bool(rng.random() < 0.5),
        finish=finish,
        accessory=accessory,
        seed=int(rng.integers(2**31)),
    )


def world_samples(seed: int, count: int) -> Iterator[tuple[Scene, str]]:
    """`count` (scene, caption) pairs of the training distribution; the same seed gives the same pairs."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        scene = sample_scene(rng)
        yield scene, caption(scene, rng)
