"""Disk replication for COLO (QEMU block replication, docs/block-replication.txt in QEMU).

Per protected disk, the primary's drive is a quorum (read-pattern=fifo,
vote-threshold=1) over the local image; before COLO starts a second child is
added: a `replication,mode=primary` node over an NBD client to the secondary.
The secondary's drive is the same quorum over a `replication,mode=secondary`
node: an active qcow2 (the SVM's own writes) backed by a hidden qcow2 (the old
contents of blocks the PVM overwrote since the last checkpoint) backed by the
secondary's copy of the image, which the secondary exports over NBD. At each
checkpoint QEMU empties the active and hidden layers, so the SVM's disk is the
PVM's disk at that checkpoint.

- `spec`: the disks of a host and the QEMU drive arguments for either role (pure).
- `graph`: the QMP sequences (export, resync, attach, detach, failover commit, health).
- `images`: image preparation and range-hash comparison (`coloctl disk`).
"""
