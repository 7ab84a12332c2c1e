"""HTTP entry points, one blueprint per area: parse, authorize, call a service, render."""
