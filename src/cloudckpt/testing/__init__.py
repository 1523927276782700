"""Test helpers shipped with cloudckpt: a fault-injecting store and an emulator launcher."""

from cloudckpt.testing.faults import FaultPlan, FaultyStore, SimulatedCrash

__all__ = ["FaultPlan", "FaultyStore", "SimulatedCrash"]
