"""Texts written for the demo: news snippets, one per BBC News topic pair, and a few movie reviews."""

__all__ = ["DEMO_REVIEWS", "DEMO_TEXTS"]

DEMO_TEXTS: tuple[str, ...] = (
    "Shares in the carmaker fell 8% after it cut its profit forecast for the year.",
    "The central bank held interest rates at 4.5%, citing stubborn inflation in services.",
    "The striker scored twice in the second half as the champions came from behind to win 3-2.",
    "The Australian Open champion withdrew from the tournament with a wrist injury.",
    "The prime minister faces a confidence vote after three ministers resigned on Tuesday.",
    "Opposition leaders demanded an inquiry into party funding before the general election.",
    "The band's new album went straight to number one in the charts in its first week.",
    "The film won best picture at the Oscars, and its lead actress took home two awards.",
    "A new chip from the start-up runs AI models on phones using half the battery power.",
    "Hackers stole the passwords of millions of users from the social network's servers.",
    "The games console sold out within hours as retailers struggled to meet demand.",
    "The festival's organisers said ticket sales beat every record set in its 40-year history.",
)


# Movie reviews written for the demo's sentiment stream, in the IMDB corpus's register.
DEMO_REVIEWS: tuple[str, ...] = (
    "A moving, beautifully acted film. The last twenty minutes had the whole audience in tears; see it.",
    "Two hours of my life I will never get back. The plot makes no sense and the acting is wooden.",
    "I loved every minute of it: sharp writing, a great score and the best performance of her career.",
    "Boring, predictable and far too long. Even the special effects looked cheap. Avoid.",
    "A clever, funny script and a cast that clearly enjoyed making it. One of the best comedies in years.",
    "The director wastes a fine cast on a lazy script. I nearly walked out halfway through.",
)
