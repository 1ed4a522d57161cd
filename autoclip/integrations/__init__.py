"""Framework callbacks that clip with an autoclip clipper (optional extras).

* :mod:`autoclip.integrations.lightning` -- ``AutoClipCallback`` for ``lightning.pytorch``
  (``pip install 'autoclip-tuner[lightning]'``);
* :mod:`autoclip.integrations.transformers` -- ``AutoClipCallback`` for the Hugging Face
  ``Trainer`` (``pip install 'autoclip-tuner[transformers]'``).

Both adapt the framework's hooks to a clipper (or to :func:`autoclip.suggest` when given
none), keep the clipper's state in the framework's checkpoints, and log the metrics of
:class:`autoclip.monitor.ClipMonitor`. Nothing is imported here, so ``import autoclip``
never needs either framework.
"""
