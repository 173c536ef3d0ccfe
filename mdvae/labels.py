"""Label vocabularies shared by the data sources, the models and the app."""

# MEAD's eight emotions, in the order used for class indices everywhere.
EMOTIONS: tuple[str, ...] = (
    "angry",
    "contempt",
    "disgusted",
    "fear",
    "happy",
    "neutral",
    "sad",
    "surprised",
)
EMOTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}

# MEAD intensity levels; neutral only has level 1.
LEVELS: tuple[int, ...] = (1, 2, 3)

# RAVDESS emotion codes (01..08) mapped to MEAD's names where they coincide.
# "calm" has no MEAD counterpart and maps to None; contempt never occurs in RAVDESS.
RAVDESS_EMOTIONS: dict[str, str | None] = {
    "01": "neutral",
    "02": None,  # calm
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fear",
    "07": "disgusted",
    "08": "surprised",
}
