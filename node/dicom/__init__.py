"""DICOM networking, in the order an instance meets it: the listening socket (:mod:`~node.dicom.listener`), the
receiver processes that share it (:mod:`~node.dicom.receivers`), the Storage SCP that answers each C-STORE once
the instance is durable (:mod:`~node.dicom.scp`), and the Part 10 framing of what it stores
(:mod:`~node.dicom.part10`). No pipeline decisions here.
"""
