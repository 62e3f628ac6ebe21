"""DICOM networking, in the order an instance meets it: the listening sockets (:mod:`~node.dicom.listener`,
:mod:`~node.dicom.endpoints`, DICOM TLS in :mod:`~node.dicom.tls`), the receiver processes that share them
(:mod:`~node.dicom.receivers`), who may associate (:mod:`~node.dicom.access` decides,
:mod:`~node.dicom.admission` enforces, with :mod:`~node.dicom.counters` shared by every receiver), the Storage SCP
that answers each C-STORE once the instance is durable (:mod:`~node.dicom.scp`, with :mod:`~node.dicom.entity`,
:mod:`~node.dicom.sessions` and :mod:`~node.dicom.status`), and the Part 10 framing of what it stores
(:mod:`~node.dicom.part10`). No pipeline decisions here.
"""
