"""Change alerts: watchlists (pure), messages, the delivery plan, secret masking, and the delivery edge."""
