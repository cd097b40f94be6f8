"""The worker's web endpoints: their answers (:mod:`.routes`) and the server that carries them (:mod:`.server`).

The dashboard page and its chart library (uPlot, MIT, vendored from npm) live beside these modules.
"""
