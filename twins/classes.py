"""The ten SEM morphology classes (Aversa et al. 2018 folder names) and their twin profiles."""

from __future__ import annotations

from dataclasses import dataclass

SEM_CLASSES: tuple[str, ...] = (
    "Biological",
    "Fibres",
    "Films_Coated_Surface",
    "MEMS_devices_and_electrodes",
    "Nanowires",
    "Particles",
    "Patterned_surface",
    "Porous_Sponge",
    "Powder",
    "Tips",
)

SUBSTRATE = "Substrate"
"""Label of bare substrate (gaps between regions); a frame showing only substrate has it."""


@dataclass(frozen=True)
class ClassProfile:
    """How the twin draws one class.

    `tile_pixel` is the (min, max) native pixel size in metres of the class's texture tiles
    (drawn on a 1024-px periodic tile); each region draws its own value log-uniformly, so the
    same class appears at several physical scales. `insulating` classes charge at high dose.
    `zoom` (image pixel / texture pixel), when set, overrides the dataset generator's range
    for classes whose structures are large (a MEMS pad fills a small field with flat metal).
    """

    name: str
    insulating: bool
    tile_pixel: tuple[float, float]
    zoom: tuple[float, float] | None = None


PROFILES: dict[str, ClassProfile] = {
    p.name: p
    for p in (
        ClassProfile("Biological", True, (15e-9, 40e-9)),
        ClassProfile("Fibres", True, (15e-9, 45e-9)),
        ClassProfile("Films_Coated_Surface", False, (8e-9, 25e-9)),
        ClassProfile("MEMS_devices_and_electrodes", False, (40e-9, 90e-9), zoom=(1.5, 8.0)),
        ClassProfile("Nanowires", False, (8e-9, 25e-9)),
        ClassProfile("Particles", False, (10e-9, 30e-9)),
        ClassProfile("Patterned_surface", False, (12e-9, 40e-9)),
        ClassProfile("Porous_Sponge", False, (8e-9, 30e-9)),
        ClassProfile("Powder", True, (15e-9, 45e-9)),
        ClassProfile("Tips", False, (20e-9, 60e-9)),
    )
}
