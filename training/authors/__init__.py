"""The authors' released networks, module for module, with their parameter names and shapes.

* :mod:`.stcn` — STCN (Cheng et al., NeurIPS 2021), ``hkchengrex/STCN``: ``stcn.pth``,
  ``stcn_s0.pth``.
* :mod:`.rde` — RDE-VOS (Li et al., CVPR 2022), ``Limingxing00/RDE-VOS-CVPR2022``: STCN + the
  spatio-temporal aggregation module ``mem_compress``; ``model_s012_final*.pth``.
* :mod:`.qdmn` — QDMN (Liu et al., ECCV 2022), ``workforai/QDMN``: the STM/MiVOS-style network
  with the QAM score head and prior enhancement.

Every network exposes the parts ``export/`` turns into graphs (``encode_key``,
``encode_value``, ``readout``, ``decode`` and its heads), a ``config`` dict the manifest is
written from and an ``inference`` dict: the authors' evaluation semantics the sdk honours
(``docs/graph-contract.md``, manifest version 2). :mod:`.checkpoints` recognises and strictly
loads the authors' checkpoint files.
"""
