"""DICOM networking: listening socket, Storage SCP, receiver processes, Part 10 framing."""
