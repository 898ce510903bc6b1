"""The gradient-flow gallery: the field's canonical figures on gradients through time,
each reproduced by one command, its paper's claim stated and checked by a number.

    python -m experiments.gradient_gallery --figure cliff            # one figure -> docs/gradient_flow/gallery/cliff/
    python -m experiments.gradient_gallery --figure all
    python -m experiments.gradient_gallery --figure all --smoke      # seconds each, into runs/gradient_gallery_smoke
    python -m rnnlab.report.docs                                     # re-render the gallery page from the JSONs

Each figure writes NAME.png, NAME.svg, NAME.csv (the numbers behind the plot) and
NAME.json (settings, the checks with their values, wall and CPU time). The page
docs/gradient_flow/gallery/README.md states each claim and renders the checks from
those JSONs.

Figures (``FIGURES``): cliff (Pascanu et al. 2013, the one-unit loss surface and
clipping), radius (vanishing and exploding over recurrent scales with Pascanu's
conditions), mean_field (Chen et al. 2018, the signal-propagation time scale),
curse_of_memory (Zucchet & Orvieto 2024), latching (Bengio et al. 1994, success rate
against length), temporal_order (Pascanu et al. 2013, SGD with and without clipping),
chrono_copy (Tallec & Ollivier 2018; its trials run through launch). Each module's
docstring says its model. The training figures choose learning rates by a pilot on
seeds the figure does not use, recorded in the JSON.
"""

FIGURES = ("cliff", "radius", "mean_field", "curse_of_memory", "latching", "temporal_order", "chrono_copy", "lru")
