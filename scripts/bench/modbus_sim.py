#!/usr/bin/env python3
"""Modbus TCP devices for the gateway benchmark: UNITS units of 100 holding registers whose every
value changes on every read (so report-on-change sends every reading and the two gateways do the
same work). pymodbus 3.6 (the test suite's .venv).

Usage: modbus_sim.py PORT UNITS
"""
import asyncio
import sys

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server import StartAsyncTcpServer


class Changing(ModbusSequentialDataBlock):
    def __init__(self, unit):
        super().__init__(0, [0] * 128)
        self.unit = unit
        self.reads = 0

    def getValues(self, address, count=1):
        self.reads += 1
        return [(self.unit * 1000 + self.reads * 7 + address) & 0xFFFF for address in range(address, address + count)]


def main():
    port, units = int(sys.argv[1]), int(sys.argv[2])
    slaves = {
        u: ModbusSlaveContext(hr=Changing(u), ir=ModbusSequentialDataBlock(0, [0] * 128), zero_mode=True)
        for u in range(1, units + 1)
    }
    ctx = ModbusServerContext(slaves=slaves, single=False)
    asyncio.run(StartAsyncTcpServer(context=ctx, address=("127.0.0.1", port), ignore_missing_slaves=True))


if __name__ == "__main__":
    main()
