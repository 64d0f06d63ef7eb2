"""The built-in offline corpora, generated from a seed: children's stories (`builtin_stories`) and
questions about them as Alpaca records (`builtin_instructions`). A shorter corpus is a prefix of a longer one."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

GIRLS = ("Lily Mia Emma Zoe Ava Lucy Ella Rosa Nora Ruby Sara Anna Maya Ivy Chloe Grace Hannah Julia Kira "
         "Lena Molly Nina Olive Penny Rita Sophie Tara Vera Daisy Fiona Hazel Iris June Kate Luna Mabel Pearl "
         "Poppy Stella Tess Wren Amara Priya Mei Aisha Elena Lola Bella Clara Dora").split()
BOYS = ("Tom Max Leo Sam Ben Jack Finn Oscar Theo Noah Eli Hugo Jamie Kai Liam Milo Otto Pete Ravi Toby Arlo "
        "Bruno Cody Dev Ezra Felix Gus Henry Ian Jonah Kofi Luca Marco Ned Omar Pablo Quinn Rory Simon Tim "
        "Victor Will Yusuf Zane Alfie Basil Chen Diego Ethan Hector").split()
ANIMALS = ("bunny fox bear owl mouse cat dog puppy kitten duck frog squirrel hedgehog turtle rabbit deer pig "
           "goat lamb penguin raccoon badger otter beaver elephant lion tiger monkey giraffe zebra hen robin "
           "sparrow snail bee ladybug whale dolphin crab seal koala panda").split()
SIZES = ("little", "small", "young", "tiny", "big", "fluffy", "spotted", "striped")
TRAITS = ("brave shy curious kind clever silly gentle happy grumpy playful careful friendly cheerful quiet busy "
          "proud sleepy bold polite honest funny patient eager clumsy smart sweet lively calm").split()
COLORS = ("red blue green yellow purple orange pink white brown silver golden shiny striped spotted new "
          "old favorite").split()
OBJECTS = ("ball|kite|hat|scarf|teddy bear|book|toy boat|wagon|drum|blanket|shell|map|key|lantern|bell|crayon|"
           "balloon|umbrella|whistle|yo-yo|bucket|spoon|necklace|ribbon|marble|puzzle|toy train|paper boat").split("|")
FOODS = ("apples cookies berries carrots sandwiches pancakes nuts muffins grapes cherries plums cupcakes pears "
         "strawberries buns biscuits").split()  # plural: templates say "them"
ACTIVITIES = ("play in the sand|read books|sing songs|climb trees|paint pictures|dance in the rain|run very fast|"
              "build tall towers|look at the stars|bake cakes|jump in puddles|pick flowers|count the clouds|swim|"
              "fly kites|draw funny faces|tell jokes|collect stones|play hide and seek|ride a bike").split("|")
TIMES = ("One sunny morning|One rainy afternoon|One windy day|Early one morning|One cold winter evening|"
         "On a warm summer day|One spring morning|Late one evening|One autumn afternoon|On a snowy day|"
         "One bright day|After lunch one day").split("|")
ADULTS = (("Mom", "she", "her"), ("Dad", "he", "his"), ("Grandma", "she", "her"), ("Grandpa", "he", "his"),
          ("Aunt May", "she", "her"), ("Uncle Bob", "he", "his"), ("the old owl", "he", "his"))
# (what scares, what the friend suggests doing about it)
FEARS = (("the dark", "walk down the dark hallway"), ("thunder", "watch the storm from the window"),
         ("the deep water", "swim in the deep water"), ("the big slide", "go down the big slide"),
         ("the tall ladder", "climb the tall ladder"), ("the old bridge", "cross the old bridge"),
         ("the big waves", "jump over the big waves"), ("the barking dog next door", "say hello to the barking dog"))
HUMAN_SIZES = ("little", "young", "small")
# (where, spots to search or hide, high places things get stuck)
PLACES = (
    ("in the forest", ["behind a big oak tree", "under a pile of leaves", "near a mossy log", "beside a little stream"],
     ["high in an old pine tree", "on a tall branch"]),
    ("at the park", ["under the slide", "behind the big bench", "near the swings", "in the tall grass"],
     ["at the top of a tall tree", "on the roof of the little shed"]),
    ("at the beach", ["under a big rock", "behind a sand castle", "near the blue umbrella", "in a pile of seaweed"],
     ["on top of a tall rock", "on the lifeguard's tower"]),
    ("on the farm", ["in the hay", "behind the red barn", "next to the water trough", "under the old cart"],
     ["on the barn roof", "on top of the haystack"]),
    ("in the garden", ["under the rose bush", "behind the flower pots", "near the little pond", "between the carrots"],
     ["in the apple tree", "on top of the garden wall"]),
    ("in the meadow", ["in the tall grass", "behind a big stone", "among the daisies", "near the old fence"],
     ["in a tall tree", "on top of the windmill"]),
    ("by the river", ["under the wooden bridge", "behind the reeds", "near the big rocks", "in the soft mud"],
     ["in a willow tree", "on a high rock"]),
    ("at school", ["under a desk", "behind the bookshelf", "in the coat room", "near the sandbox"],
     ["on top of the tall cupboard", "on the school roof"]),
    ("in the village", ["behind the bakery", "near the fountain", "under a market stall", "by the post office"],
     ["on the church roof", "in the tall clock tower"]),
    ("on the hill", ["behind a bush", "under a flat stone", "near the old well", "in a rabbit hole"],
     ["in a lonely tree", "on top of a big rock"]),
    ("in the backyard", ["under the porch", "behind the shed", "in the sandbox", "near the swing"],
     ["in the big maple tree", "on the shed roof"]),
    ("at the lake", ["under the dock", "behind the boat house", "among the lily pads", "near the picnic table"],
     ["in a tall birch tree", "on top of the boat house"]),
)
MORALS = {
    "lost": ["it helps to stay calm and look carefully", "a good friend helps you look",
             "you should keep your things in a safe place"],
    "stuck": ["friends can do together what one cannot do alone", "a clever idea is better than a big jump"],
    "fear": ["being brave does not mean you are never scared", "things are often less scary than they seem"],
    "share": ["sharing makes everyone happier", "a treat tastes better with a friend"],
    "broken": ["it is good to ask for help", "broken things can often be fixed with care"],
    "way": ["it is wise to ask for help when you are lost", "you should stay close to your friends"],
    "race": ["being kind is more important than winning", "helping a friend is a kind of winning"],
    "friend": ["a kind word can make a new friend", "everyone needs a friend"],
    "weather": ["a bad day can still end well", "you can have fun even when plans change"],
    "bake": ["a gift made with love is the best gift", "things do not have to be perfect to be good"],
    "honest": ["telling the truth is always best", "it is better to be honest than to hide a mistake"],
    "grow": ["good things take time", "patience helps things grow"],
}


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" or word.startswith("honest") else "a ") + word


@dataclass
class _Cast:
    """The facts of one story, and the dict that templates are filled from."""
    name: str
    gender: str
    kind: str
    trait: str
    friend: str
    fgender: str
    fkind: str
    ftrait: str
    place: tuple
    obj: str
    food: str
    adult: tuple
    facts: dict = field(default_factory=dict)

    def build(self, rng: random.Random) -> "_Cast":
        he, his, him = ("she", "her", "her") if self.gender == "f" else ("he", "his", "him")
        fhe, fhis, fhim = ("she", "her", "her") if self.fgender == "f" else ("he", "his", "him")
        self.facts = dict(
            name=self.name, he=he, his=his, him=him, He=he.title(), His=his.title(), kind=self.kind,
            trait=self.trait, a_trait=_a(self.trait), fname=self.friend, fhe=fhe, fhis=fhis, fhim=fhim,
            fHe=fhe.title(), fkind=self.fkind, ftrait=self.ftrait, a_ftrait=_a(self.ftrait), place=self.place[0],
            spot=rng.choice(self.place[1]), spot2=rng.choice(self.place[1]), high=rng.choice(self.place[2]),
            obj=self.obj, food=self.food, adult=self.adult[0], ahe=self.adult[1], ahis=self.adult[2],
            time=rng.choice(TIMES), activity=rng.choice(ACTIVITIES),
            size=rng.choice(HUMAN_SIZES if self.kind in ("girl", "boy") else SIZES))
        self.facts["fear"], self.facts["fear_act"] = rng.choice(FEARS)
        return self


def _cast(rng: random.Random) -> _Cast:
    def who() -> tuple[str, str, str]:
        gender = rng.choice("fm")
        name = rng.choice(GIRLS if gender == "f" else BOYS)
        kind = rng.choice(("girl" if gender == "f" else "boy",) + tuple(rng.sample(ANIMALS, 3)))
        return name, gender, kind

    (name, gender, kind), (friend, fgender, fkind) = who(), who()
    while friend == name:
        friend, fgender, fkind = who()
    obj = f"{rng.choice(COLORS)} {rng.choice(OBJECTS)}"
    return _Cast(name, gender, kind, rng.choice(TRAITS), friend, fgender, fkind, rng.choice(TRAITS),
                 rng.choice(PLACES), obj, rng.choice(FOODS), rng.choice(ADULTS)).build(rng)


_CHOICE = re.compile(r"\[([^\[\]]*)\]")


def _say(rng: random.Random, template: str, facts: dict) -> str:
    """Expand `[a|b]` choices (innermost first), then fill `{facts}`."""
    while "[" in template:
        template = _CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), template)
    return template.format_map(facts)


@dataclass
class _Plot:
    lines: list  # templates of the story's middle, in order
    events: list  # short past-tense templates of what happened, for "what happened next?"
    summary: str  # completes "{name} ..."
    moral: str
    end_feeling: str = "happy"


# ---- the plots: each returns the middle of a story as templates ---------------------------------

def _plot_lost(rng: random.Random) -> _Plot:
    return _Plot([
        "{He} [played with|had fun with] {his} {obj} {place} [all morning|for hours|all afternoon].",
        "But when it was time to go home, the {obj} was gone!",
        '"[Oh no|Oh dear|Uh oh]!" [cried|said|gasped] {name}. "[I lost my|Where is my|I cannot find my] {obj}!"',
        "{He} looked {spot}, but it was not there.",
        "{He} [felt|was] [very sad|so worried|close to tears].",
        '"[Do not worry|Let me help you|We will find it together]," said {fname}. "[Let us look again, slowly|Let us go back to where you played|Two pairs of eyes are better than one]."',
        "So they [looked|searched] [slowly and carefully|one step at a time|together].",
        '[At last|Then|Soon], {fname} [shouted|called out|cried], "[Here it is|I found it|Look]!"',
        "The {obj} was {spot2}, [right where {name} had left it|half hidden in the shadows|waiting for {him}].",
    ], ["{name} lost {his} {obj} {place}.", "{name} looked {spot}, but the {obj} was not there.",
        "{fname} offered to help {name} look.", "{fname} found the {obj} {spot2}."],
        "lost {his} {obj} {place} and found it again with help from {fname}", rng.choice(MORALS["lost"]))


def _plot_stuck(rng: random.Random) -> _Plot:
    return _Plot([
        "{He} was playing with {his} {obj} {place}[| with {fname}].",
        "[Suddenly|All at once|Then], a [strong|big|gusty] wind [blew|came], and the {obj} [flew up|was carried] {high}!",
        '"[Oh no|Help|Oh dear]!" [cried|shouted] {name}. "My {obj} is stuck!"',
        "{He} [jumped as high as {he} could|stretched up on {his} toes|tried to climb up], but it was too high.",
        '{fname} [thought for a moment|scratched {fhis} head|looked up]. "[I have an idea|I know what to do|Wait, I can help]," {fhe} said.',
        "[{fname} found a long stick|{fname} brought a ladder|{fname} let {name} stand on {fhis} back], and [slowly|carefully|very gently], they [reached the {obj}|got the {obj} down].",
        '"[Thank you|Thanks so much|You are the best], {fname}!" said {name}, [hugging the {obj}|with a big smile].',
    ], ["The wind carried {name}'s {obj} {high}.", "{name} jumped, but the {obj} was too high.",
        "{fname} had an idea.", "{name} and {fname} got the {obj} down together."],
        "got {his} {obj} stuck {high} and got it down with {fname}'s clever idea", rng.choice(MORALS["stuck"]))


def _plot_fear(rng: random.Random) -> _Plot:
    return _Plot([
        "{name} [was afraid of|did not like|was scared of] {fear}.",
        "{time}, {fname} [wanted|asked] {him} to {fear_act} [together|with {fhim}].",
        '"[I cannot|I do not want to|I am too scared]," [whispered|said] {name}. "[What if something bad happens?|It is too scary.|I will stay here.]"',
        '{fname} [held {his} hand|smiled kindly|sat down next to {him}]. "[I will stay with you|We can go slowly|You are braver than you think]," {fhe} said.',
        "{name} took a deep breath and [took one small step|went a little closer|counted to three].",
        "[Then another|Then one more step|And then a little more]. [It was not so bad!|Nothing bad happened.|{He} was doing it!]",
        "[Soon|Before long|In the end], {name} was [laughing|smiling|having fun], and {fear} did not seem so scary after all.",
    ], ["{name} was scared of {fear}.", "{fname} promised to stay with {name}.",
        "{name} took a deep breath and took a small step.", "{name} found that {fear} was not so scary after all."],
        "was scared of {fear}, but with {fname} beside {him} {he} found the courage to face it", rng.choice(MORALS["fear"]),
        "brave")


def _plot_share(rng: random.Random) -> _Plot:
    return _Plot([
        "{time}, {adult} gave {name} a basket of [warm|sweet|fresh|tasty] {food}.",
        "{name} sat down {spot} to eat them all [by {him}self|alone].",
        "[Just then|Soon], {fname} came by. {fHe} looked [hungry|at the basket|a little sad].",
        '"[Can I have some|May I try one|Those look good], {name}?" asked {fname}.',
        '"No," said {name}. "[They are all mine|I want them all|{adult} gave them to me]."',
        "{fname} [walked away slowly|looked down at {fhis} feet|went home sad].",
        "{name} ate one more, but [it did not taste as good|{he} did not feel happy|{his} tummy felt funny].",
        "{He} [ran after|called to|went to find] {fname}. \"[I am sorry|Please come back]! Let us share,\" {he} said.",
        "They [sat together|ate the {food} together|shared every last one], and [laughed|talked] until the sun went down.",
    ], ["{adult} gave {name} a basket of {food}.", "{name} did not want to share with {fname}.",
        "{name} felt bad and said sorry.", "{name} and {fname} shared the {food}."],
        "did not want to share {his} {food} at first, but then shared them with {fname}", rng.choice(MORALS["share"]))


def _plot_broken(rng: random.Random) -> _Plot:
    return _Plot([
        "{name} loved {his} {obj} more than anything.",
        "{time}, {he} [dropped it|tripped while holding it|left it on the step], and [crack|snap|bang]! The {obj} broke.",
        '"[Oh no|No, no, no]!" [cried|sobbed] {name}. "[My {obj} is broken|It is ruined]!"',
        "{He} tried to fix it [with some string|by {him}self|with a bit of tape], but it fell apart again.",
        '{fname} [saw {his} sad face|heard {him} crying|came over]. "[Let us ask {adult}|{adult} can fix things|Why not ask {adult}]," {fhe} said.',
        "{adult} looked at the {obj} [and smiled|very carefully|for a long time]. \"[We can fix this|This is not so bad|I know just what to do],\" {ahe} said.",
        "[With glue and a lot of care|With a needle and thread|With some paint and glue], {adult} and {name} fixed the {obj} together.",
        "It was [almost as good as new|a little different, but still wonderful|even better than before].",
    ], ["{name} broke {his} {obj}.", "{name} tried to fix it alone, but it fell apart.",
        "{fname} said they should ask {adult}.", "{adult} and {name} fixed the {obj} together."],
        "broke {his} {obj} and fixed it with {adult}'s help", rng.choice(MORALS["broken"]))


def _plot_way(rng: random.Random) -> _Plot:
    return _Plot([
        "{time}, {name} [went for a walk|went to explore|chased a butterfly] {place}.",
        "{He} went [further and further|deeper and deeper|around one corner and then another], and [soon|then] {he} did not know where {he} was.",
        '"[Where am I|Which way is home|I am lost]?" [said|whispered|cried] {name}. {He} felt [scared|lonely|worried].',
        "{He} walked one way, then the other, but everything looked the same.",
        "Then {he} [saw|heard|met] {fname}, {a_ftrait} {fkind}.",
        '"[I know the way|Follow me|I can help you]," said {fname}. "[We will go along the path|Let us follow the stream|Look, your house is just past those trees]."',
        "They walked together [until they saw {name}'s home|side by side|as the sun went down], and {adult} was waiting [at the door|with open arms].",
        '"[I was so worried|There you are|Welcome home]!" said {adult}, and gave {name} a big hug.',
    ], ["{name} got lost {place}.", "{name} walked one way and then the other.", "{fname} showed {name} the way home.",
        "{adult} gave {name} a big hug."],
        "got lost {place} and found the way home with {fname}'s help", rng.choice(MORALS["way"]), "safe")


def _plot_race(rng: random.Random) -> _Plot:
    return _Plot([
        "{time}, there was a big race {place}. Everyone wanted to win the [golden cup|blue ribbon|shiny medal].",
        "{name} [practiced every day|ran and ran|wanted to win more than anything].",
        '"Ready, set, go!" [called|shouted] {adult}, and [off they ran|everyone ran].',
        "{name} was in front! But then {he} saw {fname} fall down {spot}.",
        "{fname} was [hurt|crying|holding {fhis} knee].",
        "{name} stopped. {He} [helped {fname} up|gave {fname} {his} hand|sat with {fname}], and they walked to the finish together.",
        "They did not win, but everyone [clapped and cheered|cheered the loudest for them|smiled at them].",
        '"[You are a true friend|That was very kind]," said {adult}, and gave them both a [special|little] [ribbon|medal] for kindness.',
    ], ["There was a big race {place}.", "{fname} fell down during the race.", "{name} stopped to help {fname}.",
        "{adult} gave them a prize for kindness."],
        "stopped during a race to help {fname} and won a prize for kindness", rng.choice(MORALS["race"]), "proud")


def _plot_friend(rng: random.Random) -> _Plot:
    return _Plot([
        "{time}, a new [{fkind}|friend] came to live {place}. {fHe} was called {fname}.",
        "{fname} was [shy|quiet|new] and sat alone {spot}.",
        "The others played [tag|ball|games], but nobody asked {fname} to join.",
        "{name} saw that {fname} looked [sad|lonely|left out].",
        '{He} walked over and said, "[Hello|Hi], I am {name}. [Do you want to play with me?|Would you like to play?|Come and play with us!]"',
        '{fname} [smiled|looked up|nodded]. "[Yes, please|I would like that|Really? Thank you]!" {fhe} said.',
        "They played [with {name}'s {obj}|hide and seek|all afternoon], and {fname} laughed for the first time.",
        "From then on, {name} and {fname} were [best friends|the best of friends|always together].",
    ], ["A new {fkind} named {fname} came {place}.", "{fname} sat alone, and nobody asked {fhim} to play.",
        "{name} asked {fname} to play.", "{name} and {fname} became best friends."],
        "made friends with {fname}, a shy newcomer who was playing alone", rng.choice(MORALS["friend"]))


def _plot_weather(rng: random.Random) -> _Plot:
    return _Plot([
        "{time}, {name} and {fname} [planned|wanted] to have a picnic {place} with {food}.",
        "But [dark clouds came|the sky turned grey|the wind began to howl], and soon it [rained and rained|began to pour].",
        '"[Our picnic is ruined|Now we cannot go|This is the worst day]!" said {name} [sadly|with a frown].',
        '{fname} [thought for a while|looked around|smiled]. "[We can have the picnic inside|Let us build a tent from blankets|We can still have fun]," {fhe} said.',
        "So they [put a blanket on the floor|made a tent from chairs and blankets|set out the {food} by the window].",
        "They [ate the {food}|told stories|played games] and [listened to the rain|watched the drops race down the glass].",
        "[When the rain stopped|Later], a [big|bright] rainbow [appeared in the sky|shone over the hills|arched across the sky].",
        '"[This was the best picnic ever|Rainy days can be fun too]," said {name}.',
    ], ["{name} and {fname} planned a picnic {place}.", "It started to rain.",
        "{fname} said they could have the picnic inside.", "A rainbow appeared after the rain."],
        "had a rained-out picnic, but had fun inside with {fname}", rng.choice(MORALS["weather"]))


def _plot_bake(rng: random.Random) -> _Plot:
    return _Plot([
        "[Tomorrow was|Soon it would be] {adult}'s birthday, and {name} wanted to [make a surprise|bake a cake].",
        "{He} [got out the flour and eggs|found a big bowl|put on an apron] and [started to mix|began to bake].",
        "But the flour went [everywhere|all over the floor|on {his} nose], and the cake came out [flat|lopsided|a little burnt].",
        '"[It is all wrong|It looks terrible|Everything is ruined]," said {name}, and {his} eyes filled with tears.',
        '{fname} came to help. "[We can fix it|Let us decorate it|It just needs something on top]," {fhe} said.',
        "Together they [put berries on top|covered it with icing|added candles and flowers|added sprinkles].",
        "When {adult} saw the cake, {ahe} [smiled|laughed happily|gave {name} a big hug].",
        '"[This is the best cake in the world|I love it|Thank you, it is perfect]," {ahe} said, "because you made it [for me|with love]."',
    ], ["{name} wanted to bake a cake for {adult}'s birthday.", "The cake came out wrong.",
        "{fname} helped decorate the cake.", "{adult} loved the cake."],
        "baked a birthday cake for {adult} that went wrong, but {adult} loved it anyway", rng.choice(MORALS["bake"]))


def _plot_honest(rng: random.Random) -> _Plot:
    return _Plot([
        "{name} was [playing ball|dancing|running] inside, even though {adult} had said not to.",
        "[Crash|Smash|Bang]! {adult}'s [blue vase|favorite cup|big lamp] fell and broke.",
        "{name} [hid the pieces|ran to {his} room|said nothing] and hoped nobody would know.",
        "But {he} felt [bad|sick inside|heavy and sad] all day.",
        '{fname} [asked what was wrong|saw {his} face]. "[You should tell the truth|It is better to say sorry|Just be honest]," {fhe} said.',
        '{name} went to {adult}. "I broke it," {he} said [quietly|in a small voice]. "I am sorry."',
        "{adult} [hugged {him}|smiled|knelt down]. \"[Thank you for telling me|I am glad you told the truth|Things can be replaced, but honesty is special],\" {ahe} said.",
    ], ["{name} broke {adult}'s things while playing inside.", "{name} hid what happened and felt bad.",
        "{fname} told {name} to tell the truth.", "{name} said sorry, and {adult} was glad."],
        "broke something while playing inside and bravely told the truth", rng.choice(MORALS["honest"]), "relieved")


def _plot_grow(rng: random.Random) -> _Plot:
    return _Plot([
        "{time}, {name} found a [tiny|small|little brown] seed {spot}.",
        "{He} planted it {place} and gave it [some water|a drink|a little water].",
        "The next day, {he} ran to look. Nothing! [The next day, nothing again.|Only dirt.|Not even a leaf.]",
        '"[Why is it not growing|This is taking forever|Maybe it is broken]?" {name} asked [crossly|sadly].',
        '"[Seeds need time|Be patient|Keep watering and wait]," said {fname}. "[Every day it grows a little under the ground|Good things take time]."',
        "So {name} watered it every morning and [sang to it|waited|told it stories].",
        "[One morning|Weeks later|At last], there was a [green shoot|tiny leaf|little sprout]. Then it grew and grew!",
        "Soon it was a [tall sunflower|beautiful red flower|little tree full of fruit], and {name} was [so proud|delighted|very happy].",
    ], ["{name} planted a seed.", "The seed did not grow at first.", "{fname} told {name} to be patient.",
        "The seed grew into a plant."],
        "planted a seed and learned to wait for it to grow", rng.choice(MORALS["grow"]), "proud")


PLOTS: tuple[Callable[[random.Random], _Plot], ...] = (
    _plot_lost, _plot_stuck, _plot_fear, _plot_share, _plot_broken, _plot_way, _plot_race, _plot_friend,
    _plot_weather, _plot_bake, _plot_honest, _plot_grow)

OPENINGS = (
    "Once upon a time, there was {a_trait} {size} {kind} named {name}.",
    "Once upon a time, {place}, there lived {a_trait} {kind} called {name}.",
    "{name} was {a_trait} {size} {kind} who lived {place}.",
    "There once was {a_trait} {kind} named {name}.",
    "{place_cap}, there was {a_trait} {size} {kind}. {His} name was {name}.",
)
SCENERY = (
    "The sun was [shining|warm|bright], and the birds were [singing|chirping] in the trees.",
    "The sky was [blue|grey|full of fluffy clouds], and the air smelled of [flowers|rain|fresh grass|pine trees].",
    "It was a [quiet|busy|lovely|windy] place, full of [flowers|trees|friendly animals|tall grass].",
    "[Bees buzzed|Leaves rustled|A little stream bubbled] nearby, and everything was [calm|peaceful|bright].",
)
DETAILS = (
    "{He} loved to {activity}.",
    "Every day, {he} liked to {activity}.",
    "{He} had {a_obj} that {he} carried everywhere.",
    "{name} was very {trait}, and everyone knew it.",
    "{His} best friend was {fname}, {a_ftrait} {fkind}.",
    "{name} and {fname} played together almost every day.",
    "{He} lived with {adult} in a [little|cozy|small] house with a [red|green|blue|yellow] door.",
    "{name} always [said please and thank you|helped others|asked a lot of questions|laughed the loudest].",
)
ENDINGS = (
    "{name} felt {feeling}. From that day on, {he} knew that {moral}.",
    "That night, {name} went to bed {feeling}. {He} had learned that {moral}.",
    "{name} smiled. {He} learned that {moral}.",
    "And so {name} learned that {moral}.",
    "It was a [good|wonderful|happy] day. {name} and {fname} knew that {moral}.",
)


def _story(rng: random.Random, short: bool = False) -> tuple[str, _Cast, _Plot]:
    """One story: opening, a few details, a plot (long stories: sometimes a second episode), the ending.
    Returns the text, its cast and its (first) plot, whose facts the instruction questions ask about."""
    cast = _cast(rng)
    plots = rng.sample(PLOTS, 1 if short or rng.random() < 0.55 else 2)
    plot = plots[0](rng)
    last = plots[-1](rng) if len(plots) > 1 else plot
    facts = dict(cast.facts, moral=last.moral, feeling=last.end_feeling, a_obj=_a(cast.obj),
                 place_cap=cast.place[0][0].upper() + cast.place[0][1:])
    head = [rng.choice(OPENINGS)]
    if not short:
        head += rng.sample(SCENERY, rng.randint(0, 1)) + rng.sample(DETAILS, rng.randint(1, 3))
    blocks = [(head + plot.lines[:2], facts), (plot.lines[2:], facts)]
    if last is not plot:  # another day, so another time of day and another spot
        later = dict(facts, time=rng.choice([t for t in TIMES if t != facts["time"]]), spot=facts["spot2"])
        blocks.append((["[The next day|A few days later|Later that week|Some time later], something else "
                        "happened."] + last.lines, later))
    blocks.append(([rng.choice(ENDINGS)] + (["The end."] if not short and rng.random() < 0.3 else []), facts))
    text = "\n\n".join(" ".join(_say(rng, t, f) for t in block) for block, f in blocks)
    cast.facts = facts
    return text, cast, plot


def builtin_stories(n_chars: int = 6_000_000, seed: int = 0) -> list[str]:
    """Generated children's stories (about 500-1500 characters each) until `n_chars` characters.
    Deterministic for a seed; a smaller n_chars gives a prefix of a larger one."""
    stories, total = [], 0
    for text in iter_stories(seed):
        if total >= n_chars:
            break
        stories.append(text)
        total += len(text)
    return stories


def iter_stories(seed: int = 0) -> Iterator[str]:
    """The same stories as `builtin_stories`, one at a time and without end (corpora of any size)."""
    rng = random.Random(seed)
    while True:
        yield _story(rng)[0]


# ---- instructions ----------------------------------------------------------------------------------

OPPOSITES = (("hot", "cold"), ("big", "small"), ("happy", "sad"), ("up", "down"), ("fast", "slow"),
             ("day", "night"), ("open", "closed"), ("wet", "dry"), ("light", "dark"), ("old", "new"),
             ("full", "empty"), ("loud", "quiet"), ("tall", "short"), ("early", "late"), ("hard", "soft"),
             ("in", "out"), ("young", "old"), ("first", "last"), ("brave", "scared"), ("found", "lost"))
NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def _story_task(rng: random.Random) -> dict:
    text, cast, plot = _story(rng, short=rng.random() < 0.7)
    f = cast.facts
    say = lambda t: _say(rng, t, f)  # noqa: E731
    events = [say(e) for e in plot.events]
    i = rng.randrange(len(events) - 1)
    lead = events[i].split()[0]
    first_event = (lead.lower() + events[i][len(lead):] if lead in ("The", "A", "It", "There") else events[i])[:-1]
    tasks = [
        ("Who is the main character of this story?", say("The main character is {name}, {a_trait} {kind}.")),
        ("Where does the story take place?", say("The story takes place {place}.")),
        ("Summarize the story in one sentence.", say("{name} " + plot.summary + ".")),
        ("What lesson does the story teach?", say("The story teaches that {moral}.")),
        (f"In the story, what happened after {first_event}?", events[i + 1]),
        ("Who is {name}'s friend in the story?".format(**f), say("{name}'s friend is {fname}, {a_ftrait} {fkind}.")),
        ("How does {name} feel at the end of the story?".format(**f), say("At the end, {name} feels {feeling}.")),
        ("Give this story a short title.", say("[{name} and the {obj}|{name} Learns a Lesson|A Day {place}]")),
        ("List the main events of the story.", " ".join(f"{n + 1}. {e}" for n, e in enumerate(events))),
    ]
    if f["place"] not in text:  # some openings and plots never say where: do not ask
        tasks.pop(1)
    instruction, output = rng.choice(tasks)
    if rng.random() < 0.15:  # the reverse task: write a story from a description
        prompt = say("Write a short story about {a_trait} {kind} named {name} who " + plot.summary + ".")
        return {"instruction": prompt, "input": "", "output": text}
    return {"instruction": instruction, "input": text, "output": output}


def _general_task(rng: random.Random) -> dict:
    kind = rng.randrange(4)
    if kind == 0:
        word, other = rng.choice(OPPOSITES)[:: rng.choice((1, -1))]
        return {"instruction": f"What is the opposite of \"{word}\"?", "input": "",
                "output": f"The opposite of \"{word}\" is \"{other}\"."}
    if kind == 1:
        a, b = rng.randint(0, 6), rng.randint(0, 6)
        return {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
    if kind == 2:
        start = rng.randint(1, 5)
        end = start + rng.randint(2, 6)
        return {"instruction": f"Count from {NUMBER_WORDS[start]} to {NUMBER_WORDS[end]}.", "input": "",
                "output": ", ".join(NUMBER_WORDS[start:end + 1]).capitalize() + "."}
    words = rng.sample(ANIMALS, 4)
    return {"instruction": "Put these animals in alphabetical order.", "input": ", ".join(words),
            "output": ", ".join(sorted(words)) + "."}


def builtin_instructions(seed: int = 0, n: int = 4000) -> list[dict]:
    """`n` Alpaca records (`instruction`, `input`, `output`): questions about generated stories
    (85% of them, including writing a story from a description) and small general tasks."""
    return list(iter_instructions(seed, n))


def iter_instructions(seed: int = 0, n: int = 4000) -> Iterator[dict]:
    """The records of `builtin_instructions`, one at a time (a preview needs only the first few)."""
    rng = random.Random(seed + 7919)  # a different stream from builtin_stories' with the same seed
    for _ in range(n):
        yield _story_task(rng) if rng.random() < 0.85 else _general_task(rng)
