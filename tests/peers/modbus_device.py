#!/usr/bin/env python3
"""A Modbus device served by pymodbus, the real peer of the system tests.

Usage: modbus_device.py tcp PORT SPEC.json    (Modbus TCP on 127.0.0.1:PORT)
       modbus_device.py rtu TTY  SPEC.json    (Modbus RTU on a serial line, e.g. one end of a socat pty pair)

SPEC maps unit ids to typed values, packed here with Python's struct module, independently of the Rust
encoder under test:
  {"1": {"holding": [{"addr": 0, "type": "f32", "order": "CDAB", "value": 123.5}, ...],
         "input": [...], "coils": {"0": true}, "discrete": {"3": false}}}
Types: u16 i16 u32 i32 u64 i64 f32 f64. Orders: ABCD (big endian) DCBA BADC CDAB.
A unit may also have "counter": ADDR, a holding register that counts the reads covering it (it reads
1, 2, 3, ... one per poll), so a test can tell a lost or doubled reading from the values alone.
"""
import asyncio
import json
import struct
import sys

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server import StartAsyncSerialServer, StartAsyncTcpServer
from pymodbus.transaction import ModbusRtuFramer

FMT = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "u64": ">Q", "i64": ">q", "f32": ">f", "f64": ">d"}
SIZE = 256


def words(typ, order, value):
    raw = struct.pack(FMT[typ], int(value) if typ[0] in "ui" else float(value))
    # raw is big endian: A B C D ... Reorder per byte order (defined on 4-byte groups; 8 bytes extend it).
    if order == "ABCD":
        b = raw
    elif order == "DCBA":
        b = raw[::-1]
    elif order == "BADC":
        b = b"".join(raw[i + 1:i + 2] + raw[i:i + 1] for i in range(0, len(raw), 2))
    elif order == "CDAB":
        ws = [raw[i:i + 2] for i in range(0, len(raw), 2)]
        b = b"".join(reversed(ws))
    else:
        raise SystemExit(f"unknown byte order {order}")
    return [int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2)]


class CountingBlock(ModbusSequentialDataBlock):
    """Holding registers where one address counts the reads that cover it."""

    def __init__(self, regs, counter):
        super().__init__(0, regs)
        self.counter = counter

    def getValues(self, address, count=1):
        if address <= self.counter < address + count:
            current = super().getValues(self.counter, 1)[0]
            super().setValues(self.counter, [(current + 1) & 0xFFFF])
        return super().getValues(address, count)


def table(entries, counter=None):
    regs = [0] * SIZE
    for e in entries:
        for i, w in enumerate(words(e["type"], e.get("order", "ABCD"), e["value"])):
            regs[e["addr"] + i] = w
    if counter is not None:
        return CountingBlock(regs, counter)
    return ModbusSequentialDataBlock(0, regs)


def bits(entries):
    vals = [False] * SIZE
    for addr, v in entries.items():
        vals[int(addr)] = bool(v)
    return ModbusSequentialDataBlock(0, vals)


def main():
    mode, where, spec_file = sys.argv[1:4]
    spec = json.load(open(spec_file))
    slaves = {
        int(unit): ModbusSlaveContext(
            hr=table(s.get("holding", []), s.get("counter")),
            ir=table(s.get("input", [])),
            co=bits(s.get("coils", {})),
            di=bits(s.get("discrete", {})),
            zero_mode=True,
        )
        for unit, s in spec.items()
    }
    ctx = ModbusServerContext(slaves=slaves, single=False)
    if mode == "tcp":
        asyncio.run(StartAsyncTcpServer(context=ctx, address=("127.0.0.1", int(where)), ignore_missing_slaves=True))
    else:
        asyncio.run(StartAsyncSerialServer(context=ctx, port=where, framer=ModbusRtuFramer, baudrate=9600,
                                           ignore_missing_slaves=True))


if __name__ == "__main__":
    main()
