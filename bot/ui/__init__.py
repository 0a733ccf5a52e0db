"""What members see and click: buttons (DynamicItems), modals, embeds and progress text,
the series album's components, tips."""
