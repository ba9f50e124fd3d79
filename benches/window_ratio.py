"""Compression ratio of simulated telemetry by permessage-deflate client window.

Builds 2,000 `telehub.v1.Envelope{telemetry}` messages by hand with the fields of
device-sim's `env.temperature` profile and compresses each as a client would
(raw deflate, level 6, Z_SYNC_FLUSH, trailer removed), with and without context
takeover. Prints compressed size / original size. See BENCHMARKS.md.

    python3 benches/window_ratio.py
"""
import random
import struct
import zlib


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def reading(name, value, unit):
    return field(1, name.encode()) + varint(2 << 3 | 1) + struct.pack("<d", value) + field(7, unit.encode())


def envelopes(n=2000):
    random.seed(1)
    t, h, ts = 21.0, 40.0, 1764470000000
    for seq in range(n):
        t += random.gauss(0, 0.05)
        h += random.gauss(0, 0.1)
        ts += random.randint(990, 1010)
        telemetry = (
            field(2, b"env.temperature")
            + varint(3 << 3) + varint(ts)
            + varint(4 << 3) + varint(seq)
            + field(5, reading("temperature", round(t, 2), "Cel"))
            + field(5, reading("humidity", round(h, 1), "%"))
        )
        yield field(1, telemetry)


def main():
    msgs = list(envelopes())
    raw = sum(map(len, msgs))
    print(f"{len(msgs)} messages, {raw / len(msgs):.1f} bytes on average")
    for bits in (9, 10, 11, 12, 15):
        ratios = []
        for takeover in (True, False):
            c = zlib.compressobj(6, zlib.DEFLATED, -bits)
            total = 0
            for m in msgs:
                if not takeover:
                    c = zlib.compressobj(6, zlib.DEFLATED, -bits)
                out = c.compress(m) + c.flush(zlib.Z_SYNC_FLUSH)
                total += min(len(out) - 4, len(m))
            ratios.append(total / raw)
        print(f"window bits {bits:2}: takeover {ratios[0]:.3f}  alone {ratios[1]:.3f}")


if __name__ == "__main__":
    main()
