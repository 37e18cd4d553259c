#!/usr/bin/env python3
"""Reader and replayer for write logs in the Linux dm-log-writes format.

This is the format the blklogwrites filter writes (ours and QEMU's):

  sector 0        super block: magic u64, version u64, nr_entries u64,
                  sectorsize u32 (little-endian), rest of the sector zero
  sector 1...     entries, one after another; each is one sector holding
                  sector u64, nr_sectors u64, flags u64, data_len u64, then
                  (unless the entry is a discard, a flush or a mark without
                  data) nr_sectors sectors of the data written.

Sectors are of the log's own sector size (the super block's sectorsize).
Flags: FLUSH 1, FUA 2, DISCARD 4, MARK 8 (a mark carries data_len bytes of
text in the sectors after it).  The super block's nr_entries may lag the
log (it is rewritten at flushes and every log-super-update-interval
entries), so read_log() walks on past it while entries stay well formed.

  dmlog.py dump LOG                    one line per entry
  dmlog.py replay LOG IMAGE [--to N]   apply entries [0, N) to IMAGE
"""
import os
import struct
import sys

MAGIC = 0x6A736677736872
VERSION = 1
FLUSH, FUA, DISCARD, MARK = 1, 2, 4, 8
FLAG_MASK = FLUSH | FUA | DISCARD | MARK
SUPER = struct.Struct("<QQQI")
ENTRY = struct.Struct("<QQQQ")


class LogError(Exception):
    pass


class Entry:
    __slots__ = ("index", "sector", "nr_sectors", "flags", "data_len", "data_pos", "sectorsize")

    def __init__(self, index, sector, nr_sectors, flags, data_len, data_pos, sectorsize):
        self.index, self.sector, self.nr_sectors = index, sector, nr_sectors
        self.flags, self.data_len, self.data_pos = flags, data_len, data_pos
        self.sectorsize = sectorsize

    @property
    def offset(self):
        return self.sector * self.sectorsize

    @property
    def length(self):
        return self.nr_sectors * self.sectorsize

    @property
    def is_flush(self):
        return bool(self.flags & FLUSH)

    @property
    def is_fua(self):
        return bool(self.flags & FUA)

    @property
    def is_discard(self):
        return bool(self.flags & DISCARD)

    @property
    def is_mark(self):
        return bool(self.flags & MARK)

    @property
    def is_write(self):
        """Carries data for the image (a write, write-zeroes or FUA write)."""
        return not (self.flags & (DISCARD | MARK)) and self.nr_sectors > 0

    @property
    def is_barrier(self):
        """Everything before it is durable once it completed (flush or FUA)."""
        return bool(self.flags & (FLUSH | FUA))

    def kind(self):
        if self.is_mark:
            return "mark"
        if self.is_discard:
            return "discard"
        if self.is_flush and not self.nr_sectors:
            return "flush"
        return "write" + ("+fua" if self.is_fua else "") + ("+flush" if self.is_flush else "")

    def data(self, log):
        """The entry's data (bytes) read from the open log file object."""
        if self.is_discard or self.is_mark and not self.data_len:
            return b""
        n = self.data_len if self.is_mark else self.length
        return os.pread(log.fileno(), n, self.data_pos)

    def __repr__(self):
        return "%d %s off=%d len=%d" % (self.index, self.kind(), self.offset, self.length)


def read_log(path):
    """Returns (sectorsize, nr_entries_in_super, [Entry...])."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(SUPER.size)
        if len(head) < SUPER.size:
            raise LogError("%s: too short for a log super block" % path)
        magic, version, nr_super, ss = SUPER.unpack(head)
        if magic != MAGIC:
            raise LogError("%s: bad log super block magic 0x%x" % (path, magic))
        if version != VERSION:
            raise LogError("%s: unsupported log version %d" % (path, version))
        if ss < 512 or ss & (ss - 1) or ss >= 1 << 24:
            raise LogError("%s: bad log sector size %d" % (path, ss))
        entries = []
        pos = ss
        while pos + ENTRY.size <= size:
            sector, nr, flags, dlen = ENTRY.unpack(os.pread(f.fileno(), ENTRY.size, pos))
            bad = flags & ~FLAG_MASK or (flags & MARK and dlen > nr * ss + ss) \
                or sector > (1 << 63) // ss or nr > size // ss
            if bad or (flags == 0 and nr == 0 and sector == 0):
                if len(entries) < nr_super:
                    raise LogError("%s: entry %d is malformed (flags 0x%x)" % (path, len(entries), flags))
                break
            data_pos = pos + ss
            nsect = 0 if flags & DISCARD else nr
            if flags & MARK:
                nsect = (dlen + ss - 1) // ss
            if data_pos + nsect * ss > size:
                if len(entries) < nr_super:
                    raise LogError("%s: entry %d runs past the end of the log" % (path, len(entries)))
                break
            entries.append(Entry(len(entries), sector, nr, flags, dlen, data_pos, ss))
            pos = data_pos + nsect * ss
        if len(entries) < nr_super:
            raise LogError("%s: super block says %d entries, found %d" % (path, nr_super, len(entries)))
        return ss, nr_super, entries


def apply(entry, log, img_fd, discard_zeroes=True):
    """Applies one entry to the image file descriptor."""
    if entry.is_write:
        os.pwrite(img_fd, entry.data(log), entry.offset)
    elif entry.is_discard and discard_zeroes and entry.length:
        # A discarded range reads back as zeroes on the file driver.
        end = os.fstat(img_fd).st_size
        start = min(entry.offset, end)
        stop = min(entry.offset + entry.length, end)
        if stop > start:
            os.pwrite(img_fd, bytes(stop - start), start)


def replay(log_path, image_path, upto=None):
    ss, _, entries = read_log(log_path)
    upto = len(entries) if upto is None else upto
    fd = os.open(image_path, os.O_RDWR)
    try:
        with open(log_path, "rb") as log:
            for e in entries[:upto]:
                apply(e, log, fd)
    finally:
        os.close(fd)


def main(argv):
    if len(argv) >= 2 and argv[0] == "dump":
        ss, nr, entries = read_log(argv[1])
        print("sectorsize %d nr_entries(super) %d entries %d" % (ss, nr, len(entries)))
        for e in entries:
            print(e)
        return 0
    if len(argv) >= 3 and argv[0] == "replay":
        upto = int(argv[4]) if len(argv) >= 5 and argv[3] == "--to" else None
        replay(argv[1], argv[2], upto)
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except LogError as e:
        sys.stderr.write("dmlog: %s\n" % e)
        sys.exit(1)
    except OSError as e:
        sys.stderr.write("dmlog: %s: %s\n" % (e.filename, e.strerror))
        sys.exit(1)
