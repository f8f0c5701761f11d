"""The status page served by the collector: headline, page model, world map, routes, assets."""
