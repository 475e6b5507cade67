"""The world plug-ins the harness ships (the miniature digits world); their interface is harness.world."""
