"""The built-in calibration prompts of `stagevar-export calibrate` (used when --prompts is not given).

Written for this project: varied subjects (people, animals, objects, scenes, text, abstract),
styles (photo, painting, render, sketch) and compositions (close-up, wide, crowded, empty), so
the measured ranks are not tuned to one kind of image. `--num-prompts N` takes the first N.
"""

BUILTIN_PROMPTS: tuple[str, ...] = (
    "a close-up photo of a red fox sitting in fresh snow, soft morning light",
    "a busy night market in the rain, neon signs reflected on wet pavement",
    "an oil painting of a lighthouse on a cliff during a storm",
    "a bowl of ramen with a soft-boiled egg, top-down food photography",
    "a minimalist white living room with one green plant by the window",
    "a portrait of an elderly fisherman with a weathered face, black and white",
    "a watercolor map of an imaginary island with mountains and rivers",
    "a sports car drifting on a mountain road, motion blur",
    "a field of sunflowers under a clear blue sky, wide angle",
    "a 3D render of a glass chess set on a marble table",
    "a pencil sketch of a cat sleeping on a stack of books",
    "a crowded train station in the 1920s, sepia photograph",
    "a macro photo of a dew drop on a spider web",
    "a poster with the word HELLO in bold yellow letters on a blue background",
    "an astronaut riding a horse across a desert at sunset",
    "a cozy cabin in a pine forest covered with snow, warm light in the windows",
    "a bustling coral reef with tropical fish, underwater photography",
    "a medieval knight in shining armor standing in a throne room",
    "an abstract painting of colorful geometric shapes",
    "a close-up of a hummingbird drinking from a purple flower",
    "a futuristic city skyline with flying cars at dusk",
    "a child flying a kite on a windy beach",
    "a stack of pancakes with berries and maple syrup",
    "an ancient temple overgrown by jungle vines",
    "a golden retriever puppy playing with a tennis ball on grass",
    "a snowy mountain range reflected in a still alpine lake",
    "a steampunk pocket watch with visible gears, studio lighting",
    "a street musician playing violin in a European square",
    "a bright anime illustration of a girl reading under a cherry tree",
    "an empty desert highway stretching to the horizon",
    "a vintage typewriter on a wooden desk next to a cup of coffee",
    "a flock of birds flying over a wheat field at golden hour",
)
