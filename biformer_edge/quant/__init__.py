"""INT8 for BiFormer: quantization-aware routing (QAR) on NVIDIA ModelOpt.

- ``settings.py``: what an export asks for (:class:`~.settings.QuantSettings`; torch-free).
- ``prepare.py``: the one call an export makes (:func:`~.prepare.prepare`).
- ``calibration.py``: calibration recipes and samples; ``cache.py``: reuse of identical calibrations.
- ``int8.py``: ModelOpt quantization with the router island; ``qar.py``: the routing-aware keep-float search.
- ``qat.py`` / ``qat_checkpoint.py``: routing-consistent QAT (``biformer-qat``) and its files.
- ``report.py``: the router-island check and the layer report of the graph a backend wrote.

Importing this package imports nothing: torch and ModelOpt load with the module that needs them.
"""
