"""Replays a terminal recording (from `script`) through a terminal emulator (pyte) and prints
what the screen finally shows, one line per row, trailing blanks removed. Tests use it to
check what a user is left looking at after progress bars ran."""
import sys

import pyte

screen = pyte.Screen(160, 60)
stream = pyte.ByteStream(screen)
with open(sys.argv[1], "rb") as f:
    data = f.read()
# `script` adds a header and a trailer line of its own.
start = data.find(b"\n") + 1 if data.startswith(b"Script started") else 0
end = data.rfind(b"\nScript done")
stream.feed(data[start : end if end != -1 else len(data)])
for row in screen.display:
    line = row.rstrip()
    if line:
        print(line)
