"""The node's stages, in flow order, each a :class:`~node.pipeline.stage.Stage` with ``step()``:

1. :mod:`~node.pipeline.completion`: a series is complete once quiet for ``[series] quiet_seconds``;
2. :mod:`~node.pipeline.export`: each stack of a complete series becomes a NIfTI and a sidecar, then the command
   hook runs;
3. :mod:`~node.pipeline.intake`: settled inbox items (:mod:`~node.pipeline.inbox`) become jobs;
4. :mod:`~node.pipeline.build`: a job is matched to its series and stack (:mod:`~node.pipeline.match`), becomes a
   verified SEG (:mod:`node.convert`), and its input is filed away (:mod:`~node.pipeline.filing`);
5. :mod:`~node.pipeline.deliver`: the SEG goes to every destination (:mod:`node.destinations`).

Stages talk only through the state (:mod:`node.state`) and the file system.
"""
