"""The text of the generated benchmark pages: short news articles and the boilerplate around them, per language.

All of it was written for this benchmark (no page text is copied). Each article is a title and paragraphs of
sentences; a paragraph given as a list is rendered as a ``<ul>`` by the shapes that have lists.
"""

from __future__ import annotations

ARTICLES: dict[str, list[dict[str, object]]] = {
    "en": [
        {
            "title": "Harbour board votes to close the old fish market",
            "paragraphs": [
                "The harbour board voted on Monday to close the old fish market by the end of the year. "
                "Traders who have sold there for decades say they heard about the plan only last week.",
                "The board wants to turn the building into a ferry terminal with room for two hundred cars. "
                "A public meeting about the plan will be held in the town hall next Thursday evening.",
                ["Most stalls open before dawn and close by noon.",
                 "Several families have run the same stall for three generations."],
                "The market opened in 1931 and still has its original iron roof and stone counters. "
                "Several traders have started a petition asking the board to find them a new site nearby.",
            ],
        },
        {
            "title": "Probe ready for launch after valve repair",
            "paragraphs": [
                "The launch window opens on Tuesday morning and closes shortly after sunrise, the agency said. "
                "Engineers spent the weekend replacing a faulty valve on the second stage of the rocket.",
                "The probe will spend four years mapping the ice on the moons of the outer planets. "
                "Its cameras were built by a small team at a university laboratory in the north of the country.",
                ["The first images are expected about six months after the launch.",
                 "The data will be published online within a week of arriving."],
                "If the weather is poor, the next attempt would be made two days later at the same hour. "
                "Mission managers said the rocket itself had passed every test since the repair.",
            ],
        },
        {
            "title": "Village clinic closes after its doctor retires",
            "paragraphs": [
                "The village clinic closed on Friday after its only doctor retired last month. "
                "She had worked there for twenty-six years and trained as a physician in the capital.",
                "The council has been looking for a replacement since the spring without success. "
                "Police said the building would stay locked until the council decides what to do with it.",
                ["Residents will miss the evening appointments for people who work in the town.",
                 "A nurse used to visit older patients in their homes every week."],
                "The nearest clinic is now forty minutes away by bus, and the bus runs only twice a day. "
                "The radio station in the valley has started a weekly programme with health advice.",
            ],
        },
    ],
    "de": [
        {
            "title": "Stadtrat beschließt neue Radwege",
            "paragraphs": [
                "Der Stadtrat hat am Dienstag beschlossen, drei neue Radwege durch die Innenstadt zu bauen. "
                "Die Arbeiten sollen im Frühjahr beginnen und bis zum Herbst abgeschlossen sein.",
                "Auf der Hauptstraße wird dafür eine Fahrspur für Autos wegfallen. "
                "Die Händler in der Altstadt befürchten, dass weniger Kunden in die Geschäfte kommen.",
                ["Der erste Abschnitt führt vom Bahnhof bis zum Marktplatz.",
                 "Der zweite Abschnitt verbindet die Universität mit dem Stadtpark."],
                "Die Stadt rechnet mit Kosten von rund vier Millionen Euro. "
                "Ein großer Teil des Geldes kommt aus einem Förderprogramm des Landes.",
            ],
        },
        {
            "title": "Feuerwehr löscht Brand in einer Scheune",
            "paragraphs": [
                "In der Nacht zum Sonntag ist in einer Scheune am Ortsrand ein Feuer ausgebrochen. "
                "Die Feuerwehr war mit drei Fahrzeugen und zwanzig Einsatzkräften vor Ort.",
                "Nach etwa einer Stunde hatten die Helfer den Brand unter Kontrolle. "
                "Verletzt wurde niemand, doch das gelagerte Heu ist vollständig verbrannt.",
                ["Die Tiere waren schon am Abend auf die Weide gebracht worden.",
                 "Ein Nachbar hatte den Rauch bemerkt und sofort die Feuerwehr gerufen."],
                "Die Polizei schätzt den Schaden auf mehr als hunderttausend Euro. "
                "Zur Ursache des Feuers konnten die Ermittler noch keine Angaben machen.",
            ],
        },
        {
            "title": "Bibliothek verlängert ihre Öffnungszeiten",
            "paragraphs": [
                "Die Stadtbibliothek hat ab dem nächsten Monat auch am Samstagnachmittag geöffnet. "
                "Damit reagiert sie auf viele Wünsche von Familien und Berufstätigen.",
                "Für die längeren Öffnungszeiten werden zwei zusätzliche Stellen geschaffen. "
                "Außerdem sollen die Räume im Erdgeschoss neu eingerichtet werden.",
                ["Kinder können sich dann auch am Wochenende Bücher ausleihen.",
                 "Im Lesesaal gibt es künftig mehr Plätze mit Steckdosen."],
                "Die Leiterin der Bibliothek freut sich über die Entscheidung des Stadtrats. "
                "Sie hofft, dass vor allem junge Leser wieder häufiger in die Bibliothek kommen.",
            ],
        },
    ],
    "fr": [
        {
            "title": "Le vieux pont rouvre après huit mois de travaux",
            "paragraphs": [
                "Après huit mois de travaux, le vieux pont de la ville a rouvert samedi matin aux piétons. "
                "« Nous avons tenu les délais malgré un hiver difficile », a déclaré le maire devant une petite "
                "foule. « Les voitures pourront passer dès lundi. » Les commerçants du quartier attendaient "
                "cette nouvelle depuis longtemps.",
                "Le chantier a coûté deux millions d'euros, un peu moins que prévu au départ. "
                "Les piliers ont été renforcés et le tablier entièrement refait.",
                ["Une piste cyclable a été ajoutée du côté nord.",
                 "Les lampadaires anciens ont été restaurés et remis en place."],
                "Une fête sera organisée sur le pont le premier dimanche du mois prochain. "
                "Les habitants sont invités à apporter des photos anciennes du quartier.",
            ],
        },
        {
            "title": "Les vendanges commencent plus tôt cette année",
            "paragraphs": [
                "Les vendanges ont commencé cette semaine dans la vallée, avec dix jours d'avance. "
                "La chaleur de l'été a fait mûrir les raisins plus vite que d'habitude.",
                "Les vignerons manquent pourtant de bras pour la cueillette. "
                "« Nous cherchons encore une vingtaine de personnes », explique une productrice du village.",
                ["Les premières parcelles récoltées sont celles du blanc.",
                 "Le rouge sera cueilli à partir de la semaine prochaine."],
                "La récolte devrait être moins abondante que l'an dernier, mais de bonne qualité. "
                "Les coopératives annoncent un prix d'achat stable pour le raisin.",
            ],
        },
        {
            "title": "Une nouvelle ligne de bus pour les villages",
            "paragraphs": [
                "Une nouvelle ligne de bus reliera bientôt les villages de la montagne à la gare. "
                "Elle fonctionnera tous les jours de six heures du matin à neuf heures du soir.",
                "Le département financera la ligne pendant les trois premières années. "
                "Les élus espèrent que les habitants laisseront plus souvent leur voiture au garage.",
                ["Le billet coûtera un euro, quel que soit le trajet.",
                 "Les vélos pourront être transportés à l'arrière du bus."],
                "Une consultation publique a permis de choisir l'emplacement des arrêts. "
                "Le premier bus partira de la place de l'église le lundi de la rentrée.",
            ],
        },
    ],
    "pl": [
        {
            "title": "Nowy trener w klubie piłkarskim",
            "paragraphs": [
                "Zarząd klubu przedstawił w piątek nowego trenera pierwszej drużyny. "
                "Prezes długo mówił o kłopotach i przyszłości klubu. – Trzeba działać szybko, bo sezon zaczyna "
                "się za miesiąc – dodał po konferencji. Trener podpisał umowę na dwa lata.",
                "Kibice przyjęli tę wiadomość spokojnie, choć wielu liczyło na głośniejsze nazwisko. "
                "Nowy szkoleniowiec pracował wcześniej z młodzieżą w sąsiednim mieście.",
                ["Pierwszy trening odbędzie się w poniedziałek rano.",
                 "Drużyna pojedzie na obóz w góry pod koniec miesiąca."],
                "Klub szuka jeszcze dwóch obrońców i bramkarza. "
                "Rozmowy z zawodnikami mają się zakończyć przed startem rozgrywek.",
            ],
        },
        {
            "title": "Żółw wrócił do stawu w parku",
            "paragraphs": [
                "Żółw błotny, który zniknął ze stawu w parku miejskim, wrócił po dwóch tygodniach. "
                "Pracownicy parku znaleźli go w poniedziałek w trzcinach przy północnym brzegu.",
                "Zwierzę jest zdrowe i dostało nową obrączkę z numerem. "
                "Przyrodnicy proszą spacerowiczów, żeby nie zabierali żółwi do domu.",
                ["W stawie żyją jeszcze cztery żółwie tego gatunku.",
                 "Jesienią zostanie tam zbudowana mała wyspa dla ptaków."],
                "Park jest otwarty codziennie od świtu do zmroku. "
                "W soboty przewodnicy oprowadzają chętnych po najciekawszych miejscach.",
            ],
        },
        {
            "title": "Ogrody deszczowe przy szkołach",
            "paragraphs": [
                "Rada miasta zdecydowała, że przy pięciu szkołach powstaną ogrody deszczowe. "
                "Woda z dachów będzie spływać do specjalnych zagłębień obsadzonych roślinami.",
                "Takie ogrody zatrzymują deszczówkę i chronią ulice przed zalaniem. "
                "Uczniowie sami posadzą rośliny pod okiem nauczycieli przyrody.",
                ["Pierwsze prace ruszą jeszcze przed wakacjami.",
                 "Każdy ogród będzie miał tablicę z opisem roślin."],
                "Miasto przeznaczy na ten cel dwieście tysięcy złotych. "
                "Jeśli pomysł się sprawdzi, w przyszłym roku ogrody powstaną także przy przedszkolach.",
            ],
        },
    ],
}

#: Boilerplate around the article, per language: all of it full sentences, so a leak would show in precision.
BOILERPLATE: dict[str, dict[str, object]] = {
    "en": {
        "nav": ["Home", "Local", "Sport", "Weather", "Contact"],
        "ad": "Save twenty percent on sea kayak tours this weekend when you book before Friday.",
        "related": ["Council approves the new budget for roads", "Ferry prices rise again this winter"],
        "comments": ["I have bought my fish at that market every week for thirty years and I am very sad.",
                     "The council should listen to the people who actually live and work here."],
        "footer": "Copyright Harbour Gazette. All rights reserved. Read our privacy policy before you subscribe.",
        "newsletter": "Sign up for our newsletter to receive the most important local news every morning.",
    },
    "de": {
        "nav": ["Startseite", "Lokales", "Sport", "Wetter", "Kontakt"],
        "ad": "Jetzt zwanzig Prozent auf alle Fahrräder sparen, nur noch bis zum Ende dieser Woche.",
        "related": ["Neue Ampel an der Schulstraße", "Weihnachtsmarkt öffnet früher"],
        "comments": ["Ich finde die Entscheidung richtig, endlich passiert in unserer Stadt etwas.",
                     "Das Geld hätte man besser für die Schulen ausgeben sollen, meine ich."],
        "footer": "Alle Rechte vorbehalten. Bitte lesen Sie unsere Hinweise zum Datenschutz.",
        "newsletter": "Abonnieren Sie unseren Newsletter und erhalten Sie jeden Morgen die wichtigsten Nachrichten.",
    },
    "fr": {
        "nav": ["Accueil", "Région", "Sports", "Météo", "Contact"],
        "ad": "Profitez de vingt pour cent de remise sur nos séjours à la mer jusqu'à dimanche soir.",
        "related": ["Le marché de Noël ouvre ses portes", "Travaux sur la route départementale"],
        "comments": ["Il était temps que la mairie s'occupe enfin de ce problème dans notre quartier.",
                     "Je ne comprends pas pourquoi personne ne nous a demandé notre avis avant."],
        "footer": "Tous droits réservés. Consultez notre politique de confidentialité avant de vous abonner.",
        "newsletter": "Inscrivez-vous à notre lettre pour recevoir chaque matin les nouvelles de la région.",
    },
    "pl": {
        "nav": ["Strona główna", "Region", "Sport", "Pogoda", "Kontakt"],
        "ad": "Zamów projekt ogrodu już dziś i odbierz rabat dwadzieścia procent na wszystkie rośliny.",
        "related": ["Nowe rondo przy dworcu", "Jarmark świąteczny w rynku"],
        "comments": ["Bardzo dobrze, że wreszcie ktoś w mieście o tym pomyślał i coś zrobił.",
                     "Szkoda tylko, że nikt nie zapytał mieszkańców o zdanie przed decyzją."],
        "footer": "Wszelkie prawa zastrzeżone. Przeczytaj naszą politykę prywatności przed zapisaniem się.",
        "newsletter": "Zapisz się na nasz newsletter i otrzymuj codziennie rano najważniejsze wiadomości.",
    },
}

#: A legacy single-byte charset per language, for the pages whose header and bytes disagree.
LEGACY_CHARSET = {"en": "cp1252", "de": "cp1252", "fr": "cp1252", "pl": "cp1250"}
