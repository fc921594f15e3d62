"""Every Redis adapter, over one connection module: live state (`live`), the location bus
(`bus`), dispatch's spatial index (`dispatch_index`), command router (`command_router`) and the
rebuild that refills them when Redis comes back empty (`index_rebuild`)."""
